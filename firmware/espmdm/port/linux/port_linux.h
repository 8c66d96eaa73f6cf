/* The linux port's own facts (host builds only). */
#pragma once

#include <stdint.h>

#include "esp_err.h"

/* Exit status of the process when the component reboots the "device" (after an OTA): its
 * runner starts it again on the same state directory. */
#define ESPMDM_LINUX_REBOOT_EXIT 75

/* Version, secure version and ELF SHA-256 (hex, "" when zero) of an app image file. */
esp_err_t mdm_linux_image_info(const char *file, char version[32], uint32_t *secure_version, char elf_sha[65]);
