package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/espmdm/espmdm/nvs"
)

func init() { subcommands = append(subcommands, newNVSCmd) }

func newNVSCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "nvs",
		Short: "Generate and inspect ESP-IDF NVS partitions",
	}
	cmd.AddCommand(newNVSGenerateCmd(), newNVSDumpCmd())
	return cmd
}

func usageError(format string, args ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, args...)}
}

func newNVSGenerateCmd() *cobra.Command {
	var (
		version int
		outdir  string
	)
	cmd := &cobra.Command{
		Use:   "generate [--version 1|2] [--outdir DIR] IN.csv... OUT.bin SIZE",
		Short: "Build an NVS partition from ESP-IDF's CSV format",
		Long: `Builds an NVS partition image from one or more CSV files in the format of
ESP-IDF's nvs_partition_gen (key,type,encoding,value), byte for byte what
"python -m esp_idf_nvs_partition_gen generate" writes for the same input.

SIZE is the partition size in bytes, hexadecimal (0x6000) or decimal: a
multiple of 4096, at least 0x3000. Paths in file rows are relative to the
directory of their CSV file. The output file must end in .bin.`,
		Args: cobra.MinimumNArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			if version != nvs.Version1 && version != nvs.Version2 {
				return usageError("--version must be 1 or 2, not %d", version)
			}
			inputs, out, sizeArg := args[:len(args)-2], args[len(args)-2], args[len(args)-1]
			size, err := strconv.ParseInt(strings.ReplaceAll(sizeArg, "_", ""), 0, 64)
			if err != nil || size <= 0 || size > 1<<32 {
				return usageError("SIZE %q is not a size in bytes (e.g. 0x6000 or 24576)", sizeArg)
			}
			if filepath.Ext(out) != ".bin" {
				return usageError("%s: only the .bin extension is allowed for the output", out)
			}
			var entries []nvs.Entry
			for _, in := range inputs {
				es, err := readCSVFile(in)
				if err != nil {
					return err
				}
				entries = append(entries, es...)
			}
			img, err := nvs.Encode(entries, nvs.Options{Size: int(size), Version: version})
			if err != nil {
				return err
			}
			// Like the generator: a relative output goes under --outdir
			// (default the working directory), whose parts are created.
			abs := out
			if !filepath.IsAbs(out) {
				dir := outdir
				if dir == "" {
					wd, err := os.Getwd()
					if err != nil {
						return err
					}
					dir = wd
				}
				abs = strings.TrimSuffix(dir, string(filepath.Separator)) + string(filepath.Separator) + out
			}
			if err := os.MkdirAll(filepath.Dir(abs), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(abs, img, 0o644); err != nil {
				return err
			}
			label := "V2 - Multipage Blob Support Enabled"
			if version == nvs.Version1 {
				label = "V1 - Multipage Blob Support Disabled"
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "\nCreating NVS binary with version: %s\n", label)
			fmt.Fprintf(w, "\nCreated NVS binary: ===> %s\n", abs)
			return nil
		},
	}
	cmd.Flags().IntVar(&version, "version", nvs.Version2,
		"format version: 1 (multi-page blobs disabled) or 2 (multi-page blobs enabled)")
	cmd.Flags().StringVar(&outdir, "outdir", "", "directory for a relative OUT.bin (default: the working directory)")
	return cmd
}

func readCSVFile(name string) ([]nvs.Entry, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	entries, err := nvs.ReadCSV(f, csvDirFS(filepath.Dir(name)))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return entries, nil
}

// csvDirFS opens the files of file rows: relative paths against the CSV's
// directory, absolute paths as they are.
type csvDirFS string

func (d csvDirFS) Open(name string) (fs.File, error) {
	if !filepath.IsAbs(name) {
		name = filepath.Join(string(d), filepath.FromSlash(name))
	}
	return os.Open(name)
}

func newNVSDumpCmd() *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "dump [--format text|csv|json] IN.bin",
		Short: "Print the entries of an NVS partition",
		Long: `Prints every entry of an NVS partition image as a device would read it.

text: a table of namespace, key, type and value (strings quoted, blobs base64).
csv:  ESP-IDF's CSV format, which "nvs generate" reads back.
json: a list of {namespace, key, type, value}; type is one of u8 i8 u16 i16
      u32 i32 u64 i64 string blob, integers are numbers, blobs base64.

A corrupt image exits with status 1 and names the offset of the defect.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch format {
			case "text", "csv", "json":
			default:
				return usageError("--format must be text, csv or json, not %q", format)
			}
			img, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			entries, err := nvs.Decode(img)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			w := cmd.OutOrStdout()
			switch format {
			case "csv":
				return nvs.WriteCSV(w, entries)
			case "json":
				return dumpJSON(w, entries)
			}
			return dumpText(w, entries)
		},
	}
	cmd.Flags().StringVar(&format, "format", "text", "output format: text, csv or json")
	return cmd
}

// jsonEntry is the JSON shape of one item.
type jsonEntry struct {
	Namespace string `json:"namespace"`
	Key       string `json:"key"`
	Type      string `json:"type"`
	Value     any    `json:"value"`
}

func dumpJSON(w io.Writer, entries []nvs.Entry) error {
	out := []jsonEntry{}
	for _, e := range entries {
		if e.Type == nvs.TypeNamespace {
			continue
		}
		je := jsonEntry{Namespace: e.Namespace, Key: e.Key, Type: e.Type.String()}
		switch v := e.Value.(type) {
		case string:
			je.Value = v
		case []byte:
			je.Value = base64.StdEncoding.EncodeToString(v)
		default:
			je.Value = json.Number(fmt.Sprint(v)) // exact, also for u64
		}
		out = append(out, je)
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func dumpText(w io.Writer, entries []nvs.Entry) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAMESPACE\tKEY\tTYPE\tVALUE")
	for _, e := range entries {
		if e.Type == nvs.TypeNamespace {
			continue
		}
		var value string
		switch v := e.Value.(type) {
		case string:
			value = strconv.Quote(v)
		case []byte:
			value = base64.StdEncoding.EncodeToString(v)
		default:
			value = fmt.Sprint(v)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.Namespace, e.Key, e.Type, value)
	}
	return tw.Flush()
}
