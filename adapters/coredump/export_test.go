package coredump

// WithoutOSABIWorkaround makes a run GDB as configured, without "set osabi
// none", to reproduce esp-coredump's failure with Debian's GDB.
func WithoutOSABIWorkaround(a *Analyzer) { a.osabiNone = false }
