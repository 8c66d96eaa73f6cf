package keycloak

import (
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
)

// stackProfiles and stackPolicies are what the stack's realm answers
// (integration/realm/iot-realm.json).
const (
	stackProfiles = `{"profiles":[{"name":"espmdm-secret-rotation","executors":[{"executor":"secret-rotation",
		"configuration":{"expiration-period":"157680000","rotated-expiration-period":"604800","remaining-rotation-period":"0"}}]}],
		"globalProfiles":[{"name":"fapi-1-baseline","executors":[{"executor":"secure-session","configuration":{}}]}]}`
	stackPolicies = `{"policies":[{"name":"espmdm-secret-rotation","enabled":true,
		"conditions":[{"condition":"client-access-type","configuration":{"type":["confidential"]}}],
		"profiles":["espmdm-secret-rotation"]}],"globalPolicies":[]}`
)

func TestEvaluateRotation(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	on := featureState{known: true, enabled: true}
	tests := []struct {
		name     string
		profiles string // default stackProfiles
		policies string // default stackPolicies
		feature  *featureState
		covered  bool
		// periods (seconds) when covered
		exp, rotated, remaining int64
		problems                []string // substrings, one per problem, in order
	}{
		{name: "the stack's realm", covered: true, exp: 157680000, rotated: 604800},
		{name: "feature off", feature: &featureState{known: true}, covered: true, exp: 157680000, rotated: 604800,
			problems: []string{problemFeatureOff}},
		{name: "feature unknown", feature: &featureState{why: "GET /admin/serverinfo was refused"}, covered: true, exp: 157680000, rotated: 604800,
			problems: []string{"cannot tell whether Keycloak's client-secret-rotation feature is on: GET /admin/serverinfo was refused"}},
		{name: "no policy", policies: `{"policies":[],"globalPolicies":[]}`,
			problems: []string{"no client policy uses a client profile with a secret-rotation executor"}},
		{name: "no policies at all and the feature off", policies: `{}`, profiles: `{}`, feature: &featureState{known: true},
			problems: []string{problemFeatureOff, "no client policy uses"}},
		{name: "policy disabled",
			policies: strings.Replace(stackPolicies, `"enabled":true`, `"enabled":false`, 1),
			problems: []string{`client policy "espmdm-secret-rotation" (profile "espmdm-secret-rotation" with the secret-rotation executor) is disabled`}},
		{name: "profile without the executor",
			profiles: `{"profiles":[{"name":"espmdm-secret-rotation","executors":[{"executor":"pkce-enforcer"}]}]}`,
			problems: []string{`client policy "espmdm-secret-rotation" covers the device clients, but none of its profiles ["espmdm-secret-rotation"] has a secret-rotation executor`}},
		{name: "policy names a missing profile", profiles: `{"profiles":[]}`,
			problems: []string{`names client profile "espmdm-secret-rotation", which does not exist`,
				`none of its profiles ["espmdm-secret-rotation"] has a secret-rotation executor`}},
		{name: "public clients only",
			policies: strings.Replace(stackPolicies, `["confidential"]`, `["public","bearer-only"]`, 1),
			problems: []string{`client policy "espmdm-secret-rotation" does not cover the device clients (confidential clients): its condition client-access-type`}},
		{name: "negative logic excluding public clients covers",
			policies: strings.Replace(stackPolicies, `{"type":["confidential"]}`, `{"type":["public"],"is-negative-logic":true}`, 1),
			covered:  true, exp: 157680000, rotated: 604800},
		{name: "negative logic excluding confidential clients",
			policies: strings.Replace(stackPolicies, `{"type":["confidential"]}`, `{"type":["confidential"],"is-negative-logic":"true"}`, 1),
			problems: []string{"does not cover the device clients"}},
		{name: "any-client",
			policies: strings.Replace(stackPolicies, `"condition":"client-access-type"`, `"condition":"any-client"`, 1),
			covered:  true, exp: 157680000, rotated: 604800},
		{name: "a condition that cannot be evaluated",
			policies: strings.Replace(stackPolicies, `"condition":"client-access-type"`, `"condition":"client-roles"`, 1),
			problems: []string{`client policy "espmdm-secret-rotation" has the condition client-roles, which espmdm cannot evaluate`}},
		{name: "one condition of two cannot be evaluated",
			policies: strings.Replace(stackPolicies, `"conditions":[`, `"conditions":[{"condition":"client-scopes","configuration":{}},`, 1),
			problems: []string{"has the condition client-scopes"}},
		{name: "no conditions",
			policies: strings.Replace(stackPolicies, `[{"condition":"client-access-type","configuration":{"type":["confidential"]}}]`, `[]`, 1),
			problems: []string{"has no conditions, so Keycloak applies it to no client"}},
		{name: "a global policy covers",
			policies: `{"policies":[],"globalPolicies":[{"name":"g","enabled":true,"conditions":[{"condition":"any-client"}],"profiles":["espmdm-secret-rotation"]}]}`,
			covered:  true, exp: 157680000, rotated: 604800},
		{name: "the second policy covers",
			policies: `{"policies":[{"name":"off","enabled":false,"conditions":[{"condition":"any-client"}],"profiles":["espmdm-secret-rotation"]},` +
				strings.TrimPrefix(stackPolicies, `{"policies":[`),
			covered: true, exp: 157680000, rotated: 604800},
		{name: "defaults for absent keys",
			profiles: `{"profiles":[{"name":"espmdm-secret-rotation","executors":[{"executor":"secret-rotation"}]}]}`,
			covered:  true, exp: 29 * 86400, rotated: 2 * 86400, remaining: 10 * 86400,
			problems: []string{"remaining-rotation-period is 864000 s"}},
		{name: "numbers, not strings",
			profiles: `{"profiles":[{"name":"espmdm-secret-rotation","executors":[{"executor":"secret-rotation",
				"configuration":{"expiration-period":31536000,"rotated-expiration-period":86400,"remaining-rotation-period":0}}]}]}`,
			covered: true, exp: 31536000, rotated: 86400},
		{name: "remaining rotation would rotate on updates",
			profiles: strings.Replace(stackProfiles, `"remaining-rotation-period":"0"`, `"remaining-rotation-period":"3600"`, 1),
			covered:  true, exp: 157680000, rotated: 604800, remaining: 3600,
			problems: []string{`client profile "espmdm-secret-rotation": remaining-rotation-period is 3600 s`}},
		{name: "no grace",
			profiles: strings.Replace(stackProfiles, `"rotated-expiration-period":"604800"`, `"rotated-expiration-period":"0"`, 1),
			covered:  true, exp: 157680000,
			problems: []string{"rotated-expiration-period is 0 s: a generated secret ends the old one at once"}},
		{name: "expiry past 2038",
			profiles: strings.Replace(stackProfiles, `"157680000"`, `"400000000"`, 1),
			covered:  true, exp: 400000000, rotated: 604800,
			problems: []string{"expiration-period is 400000000 s: a secret generated now would expire after 2038-01-19"}},
		{name: "rotated longer than the main secret",
			profiles: strings.Replace(stackProfiles, `"604800"`, `"200000000"`, 1),
			covered:  true, exp: 157680000, rotated: 200000000,
			problems: []string{"rotated-expiration-period (200000000 s) is longer than expiration-period (157680000 s)"}},
		{name: "a period that is not a number",
			profiles: strings.Replace(stackProfiles, `"604800"`, `"a week"`, 1),
			covered:  true, exp: 157680000, rotated: 2 * 86400,
			problems: []string{`rotated-expiration-period a week is not a whole number of seconds`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			profiles, policies := tt.profiles, tt.policies
			if profiles == "" {
				profiles = stackProfiles
			}
			if policies == "" {
				policies = stackPolicies
			}
			var pr profilesRep
			var po policiesRep
			if err := json.Unmarshal([]byte(profiles), &pr); err != nil {
				t.Fatalf("profiles: %v", err)
			}
			if err := json.Unmarshal([]byte(policies), &po); err != nil {
				t.Fatalf("policies: %v", err)
			}
			feature := on
			if tt.feature != nil {
				feature = *tt.feature
			}
			got := evaluateRotation(pr, po, feature, now)
			if got.FeatureEnabled != (feature.known && feature.enabled) || got.Covered != tt.covered {
				t.Errorf("FeatureEnabled %v, Covered %v; want %v, %v", got.FeatureEnabled, got.Covered, feature.known && feature.enabled, tt.covered)
			}
			if tt.covered {
				s := time.Second
				if got.Expiration != time.Duration(tt.exp)*s || got.RotatedExpiration != time.Duration(tt.rotated)*s ||
					got.RemainingRotation != time.Duration(tt.remaining)*s {
					t.Errorf("periods %v/%v/%v, want %ds/%ds/%ds", got.Expiration, got.RotatedExpiration, got.RemainingRotation,
						tt.exp, tt.rotated, tt.remaining)
				}
				if got.Name == "" {
					t.Errorf("Name is empty")
				}
			}
			if len(got.Problems) != len(tt.problems) {
				t.Fatalf("problems %q, want %d like %q", got.Problems, len(tt.problems), tt.problems)
			}
			for i, want := range tt.problems {
				if !strings.Contains(got.Problems[i], want) {
					t.Errorf("problem %d = %q, want it to contain %q", i, got.Problems[i], want)
				}
			}
		})
	}
}

func TestServerInfoRotationFeature(t *testing.T) {
	tests := []struct {
		name, body     string
		known, enabled bool
	}{
		{"enabled (26.7.3)", `{"features":[{"name":"PASSKEYS","enabled":true},{"name":"CLIENT_SECRET_ROTATION","type":"PREVIEW","enabled":true}],
			"profileInfo":{"disabledFeatures":["SCRIPTS"],"previewFeatures":["CLIENT_SECRET_ROTATION"]}}`, true, true},
		{"disabled", `{"features":[{"name":"CLIENT_SECRET_ROTATION","enabled":false}],"profileInfo":{"disabledFeatures":["CLIENT_SECRET_ROTATION"]}}`, true, false},
		{"only the profile's disabled list", `{"profileInfo":{"disabledFeatures":["CLIENT_SECRET_ROTATION"]}}`, true, false},
		{"not listed", `{"profileInfo":{"disabledFeatures":[]}}`, false, false},
	}
	for _, tt := range tests {
		var info serverInfoRep
		if err := json.Unmarshal([]byte(tt.body), &info); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		got := info.rotationFeature()
		if got.known != tt.known || got.enabled != tt.enabled {
			t.Errorf("%s: known %v enabled %v, want %v %v", tt.name, got.known, got.enabled, tt.known, tt.enabled)
		}
		if !got.known && got.why == "" {
			t.Errorf("%s: unknown without a reason", tt.name)
		}
	}
}

func TestRotatedValid(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	tests := []struct {
		attrs map[string]string
		want  bool
	}{
		{map[string]string{attrRotatedCreation: "1", attrRotatedExpiration: "1800000000"}, true}, // expires at the end of this second
		{map[string]string{attrRotatedCreation: "1", attrRotatedExpiration: "1799999999"}, false},
		{map[string]string{attrRotatedExpiration: "1900000000"}, false}, // no creation time: Keycloak has no rotated secret
		{map[string]string{attrRotatedCreation: "1"}, false},            // no expiry: Keycloak takes it as expired
		{map[string]string{attrRotatedCreation: "1", attrRotatedExpiration: "x"}, false},
	}
	for i, tt := range tests {
		if got := rotatedValid(tt.attrs, now); got != tt.want {
			t.Errorf("#%d %v: got %v, want %v", i, tt.attrs, got, tt.want)
		}
	}
}

// forUpdate never sends the rotation attributes back, nor the secret.
func TestForUpdateDropsRotationState(t *testing.T) {
	c := found{raw: map[string]any{"id": "u", "secret": "s", "protocolMappers": []any{},
		"attributes": map[string]any{"espmdm.created": "1", attrRotated: "old", attrSecretExpiration: "2", "client.secret.creation.time": "3"}}}
	got := c.forUpdate()
	a := got["attributes"].(map[string]any)
	keys := slices.Sorted(maps.Keys(a))
	if !slices.Equal(keys, []string{"espmdm.created"}) {
		t.Errorf("attributes to PUT: %v, want only espmdm.created", keys)
	}
	if _, ok := got["secret"]; ok {
		t.Errorf("forUpdate keeps the secret")
	}
	if len(c.raw["attributes"].(map[string]any)) != 4 {
		t.Errorf("forUpdate changed the representation it copies")
	}
}
