package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/esp32image/esp32imagetest"
)

// newImageSampleCmd writes a valid application image for trying espmdm
// without ESP-IDF: it is built like ESP-IDF's (header, segments, checksum,
// appended SHA-256, app descriptor), but its code is filler and does not
// run on a device.
func newImageSampleCmd() *cobra.Command {
	var chipName, version, project, out string
	cmd := &cobra.Command{
		Use:   "sample --chip CHIP [--version V] [--project NAME] -o FILE",
		Short: "Write a valid sample application image (for trying firmware uploads without ESP-IDF)",
		Long: `Write an ESP32-family application image that espmdm accepts as firmware:
image header for CHIP, segments, checksum, appended SHA-256 and an app
descriptor with the version and project name given. Its code is filler: it
is for trying the firmware API and OTA downloads, not for flashing.

Chips: ` + strings.Join(chipNames(), ", "),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			chip, ok := esp32image.ChipByName(chipName)
			if !ok {
				return fmt.Errorf("unknown --chip %q: want one of %s", chipName, strings.Join(chipNames(), ", "))
			}
			if out == "" {
				return errors.New("-o FILE is required")
			}
			if version == "" || len(version) > 31 || len(project) > 31 {
				return errors.New("--version must be 1 to 31 characters and --project at most 31")
			}
			desc := esp32imagetest.SampleDesc(chip)
			desc.Version, desc.ProjectName = version, project
			img := esp32imagetest.New(chip, 3, true, &desc).Bytes()
			if _, err := esp32image.Parse(img); err != nil {
				return fmt.Errorf("the sample image does not validate: %w", err)
			}
			if err := os.WriteFile(out, img, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s: %s image, version %s, %d bytes\n", out, chip, version, len(img))
			return nil
		},
	}
	cmd.Flags().StringVar(&chipName, "chip", "esp32", "target chip")
	cmd.Flags().StringVar(&version, "version", "0.1.0", "app descriptor version")
	cmd.Flags().StringVar(&project, "project", "espmdm-sample", "app descriptor project name")
	cmd.Flags().StringVarP(&out, "output", "o", "", "file to write")
	return cmd
}

func chipNames() []string {
	var names []string
	for _, c := range esp32imagetest.Chips() {
		names = append(names, c.String())
	}
	return names
}
