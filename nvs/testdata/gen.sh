#!/bin/sh
# Regenerates the golden NVS images in golden/ with ESP-IDF's own generator:
#
#   pip install esp-idf-nvs-partition-gen==0.3.0
#   sh nvs/testdata/gen.sh
#
# golden/vectors.txt lists name, CSV, format version and size of every image.
# The generator runs inside golden/ so that the relative paths of file rows
# resolve against the CSV's directory, which is how nvs.ReadCSV reads them.
set -eu
cd "$(dirname "$0")/golden"
python3 -c 'import esp_idf_nvs_partition_gen as g; print("esp-idf-nvs-partition-gen", g.__version__)' > GENERATOR_VERSION
grep -v '^#' vectors.txt | while read -r name csv version size; do
	[ -n "$name" ] || continue
	rm -f "$name.bin"
	python3 -m esp_idf_nvs_partition_gen generate --version "$version" "$csv.csv" "$name.bin" "$size" >/dev/null
	echo "$name.bin: $csv.csv version $version size $size"
done
