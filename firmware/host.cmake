# Shared by the host builds (device, test): nvs_flash links with --coverage on the linux target,
# which makes every run write .gcda files into the build directory; the binaries here must run
# from anywhere (bin/espmdm-device), so that option is taken out again.
function(espmdm_host_no_coverage)
    idf_component_get_property(nvs_lib nvs_flash COMPONENT_LIB)
    foreach(prop COMPILE_OPTIONS INTERFACE_COMPILE_OPTIONS LINK_LIBRARIES INTERFACE_LINK_LIBRARIES LINK_OPTIONS INTERFACE_LINK_OPTIONS)
        get_target_property(vals ${nvs_lib} ${prop})
        if(vals)
            list(REMOVE_ITEM vals "--coverage")
            set_target_properties(${nvs_lib} PROPERTIES ${prop} "${vals}")
        endif()
    endforeach()
endfunction()
