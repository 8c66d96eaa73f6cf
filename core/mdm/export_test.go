package mdm

// VersionBefore exposes versionBefore to the black-box tests.
var VersionBefore = versionBefore
