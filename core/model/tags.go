package model

import (
	"regexp"
	"slices"
)

// Device tags (SPEC §16): what campaigns select devices by.

// MaxTags is the most tags a device carries.
const MaxTags = 32

// TagPattern is what a device tag matches.
var TagPattern = regexp.MustCompile(`^[a-z0-9_.:-]{1,64}$`)

// CheckTags validates tags for field (a *ValidationError naming it and the
// first bad tag) and returns them sorted without duplicates: a tag given
// twice is the same tag, so a set is what is kept. The limit counts the
// tags given (as the API's maxItems does). Nil is an empty set.
func CheckTags(field string, tags []string) ([]string, error) {
	if len(tags) > MaxTags {
		return nil, Invalid(field, "at most %d tags, got %d", MaxTags, len(tags))
	}
	for i, t := range tags {
		if !TagPattern.MatchString(t) {
			return nil, Invalid(field, "tag %d (%q) must match %s", i, t, TagPattern)
		}
	}
	out := slices.Clone(tags)
	slices.Sort(out)
	out = slices.Compact(out)
	if out == nil {
		out = []string{}
	}
	return out, nil
}
