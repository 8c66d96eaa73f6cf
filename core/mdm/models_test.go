package mdm_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/ports"
)

func TestCreateModelValidation(t *testing.T) {
	for _, tc := range []struct {
		name   string
		in     ports.NewModel
		field  string
		reason []string
	}{
		{"empty code", ports.NewModel{Code: "", Name: "n"}, "code", nil},
		{"upper-case code", ports.NewModel{Code: "Sensor", Name: "n"}, "code", nil},
		{"hyphen in code", ports.NewModel{Code: "a-b", Name: "n"}, "code", nil},
		{"51-char code", ports.NewModel{Code: strings.Repeat("a", 51), Name: "n"}, "code", nil},
		{"empty name", ports.NewModel{Code: "ok", Name: ""}, "name", nil},
		{"blank name", ports.NewModel{Code: "ok", Name: "  \t"}, "name", nil},
		{"256-char name", ports.NewModel{Code: "ok", Name: strings.Repeat("é", 256)}, "name", []string{"256"}},
		{"invalid UTF-8 name", ports.NewModel{Code: "ok", Name: "a\xffb"}, "name", []string{"UTF-8"}},
		{"schema not JSON", ports.NewModel{Code: "ok", Name: "n", ConfigSchema: json.RawMessage(`{"type":`)}, "config_schema", []string{"JSON"}},
		{"schema wrong keyword type", ports.NewModel{Code: "ok", Name: "n", ConfigSchema: json.RawMessage(`{"type": 5}`)}, "config_schema", []string{"at '/type'", "got number"}},
		{"schema bad regexp", ports.NewModel{Code: "ok", Name: "n", ConfigSchema: json.RawMessage(`{"pattern": "("}`)}, "config_schema", nil},
		{"schema remote $ref", ports.NewModel{Code: "ok", Name: "n", ConfigSchema: json.RawMessage(`{"$ref": "https://example.com/schema.json"}`)}, "config_schema", []string{"refers to another document", "only references within the schema"}},
		{"schema file $ref", ports.NewModel{Code: "ok", Name: "n", ConfigSchema: json.RawMessage(`{"$ref": "file:///etc/passwd"}`)}, "config_schema", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			_, err := e.svc.CreateModel(t.Context(), tc.in)
			wantValidation(t, err, tc.field, tc.reason...)
			if ms, _ := e.store.ListModels(t.Context()); len(ms) != 0 {
				t.Errorf("a model was stored: %+v", ms)
			}
		})
	}
}

func TestCreateModel(t *testing.T) {
	for _, tc := range []struct {
		name       string
		in         ports.NewModel
		wantSchema string
	}{
		{"no schema", ports.NewModel{Code: "sensor", Name: "Sensor"}, ""},
		{"null schema", ports.NewModel{Code: "sensor", Name: "Sensor", ConfigSchema: json.RawMessage(" null ")}, ""},
		{"schema compacted", ports.NewModel{Code: "sensor_2", Name: strings.Repeat("é", 255),
			ConfigSchema: json.RawMessage("{\n  \"type\": \"object\"\n}")}, `{"type":"object"}`},
		{"local $ref and $defs", ports.NewModel{Code: "x", Name: "X",
			ConfigSchema: json.RawMessage(`{"$defs":{"p":{"type":"integer"}},"properties":{"port":{"$ref":"#/$defs/p"}}}`)},
			`{"$defs":{"p":{"type":"integer"}},"properties":{"port":{"$ref":"#/$defs/p"}}}`},
		{"draft-07 schema", ports.NewModel{Code: "x", Name: "X",
			ConfigSchema: json.RawMessage(`{"$schema":"http://json-schema.org/draft-07/schema#","type":"object"}`)},
			`{"$schema":"http://json-schema.org/draft-07/schema#","type":"object"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			m, err := e.svc.CreateModel(t.Context(), tc.in)
			if err != nil {
				t.Fatalf("CreateModel: %v", err)
			}
			if m.ID == 0 || m.Code != tc.in.Code || m.Name != tc.in.Name || string(m.ConfigSchema) != tc.wantSchema {
				t.Errorf("got %+v (schema %s), want code %s name %s schema %s", m, m.ConfigSchema, tc.in.Code, tc.in.Name, tc.wantSchema)
			}
			got, err := e.svc.GetModel(t.Context(), m.ID)
			if err != nil || got.Code != tc.in.Code || string(got.ConfigSchema) != tc.wantSchema {
				t.Errorf("GetModel: got %+v, %v", got, err)
			}
		})
	}
}

func TestCreateModelDuplicateCode(t *testing.T) {
	e := newEnv(t)
	e.model(t, "sensor", "")
	_, err := e.svc.CreateModel(t.Context(), ports.NewModel{Code: "sensor", Name: "again"})
	wantIs(t, err, model.ErrConflict)
}

func TestUpdateModel(t *testing.T) {
	const schema = `{"type":"object"}`
	for _, tc := range []struct {
		name       string
		in         ports.ModelUpdate
		wantName   string
		wantSchema string
		field      string // validation error expected on field
	}{
		{"nothing", ports.ModelUpdate{}, "Model m", schema, ""},
		{"name", ports.ModelUpdate{Name: ptr("New name")}, "New name", schema, ""},
		{"schema", ports.ModelUpdate{SetSchema: true, ConfigSchema: json.RawMessage(`{"required": ["a"]}`)}, "Model m", `{"required":["a"]}`, ""},
		{"clear schema (nil)", ports.ModelUpdate{SetSchema: true}, "Model m", "", ""},
		{"clear schema (null)", ports.ModelUpdate{SetSchema: true, ConfigSchema: json.RawMessage(`null`)}, "Model m", "", ""},
		{"schema given without SetSchema is ignored", ports.ModelUpdate{ConfigSchema: json.RawMessage(`{"bad":`)}, "Model m", schema, ""},
		{"blank name", ports.ModelUpdate{Name: ptr(" ")}, "", "", "name"},
		{"bad schema", ports.ModelUpdate{SetSchema: true, ConfigSchema: json.RawMessage(`{"minimum": "x"}`)}, "", "", "config_schema"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			m := e.model(t, "m", schema)
			got, err := e.svc.UpdateModel(t.Context(), m.ID, tc.in)
			stored, _ := e.svc.GetModel(t.Context(), m.ID)
			if tc.field != "" {
				wantValidation(t, err, tc.field)
				if stored.Name != m.Name || string(stored.ConfigSchema) != schema {
					t.Errorf("a refused update changed the model: %+v", stored)
				}
				return
			}
			if err != nil {
				t.Fatalf("UpdateModel: %v", err)
			}
			for what, g := range map[string]model.DeviceModel{"result": got, "stored": stored} {
				if g.Code != "m" || g.Name != tc.wantName || string(g.ConfigSchema) != tc.wantSchema {
					t.Errorf("%s: got code %s name %q schema %s, want m %q %s", what, g.Code, g.Name, g.ConfigSchema, tc.wantName, tc.wantSchema)
				}
			}
		})
	}
}

func TestModelNotFound(t *testing.T) {
	e := newEnv(t)
	_, err := e.svc.GetModel(t.Context(), 42)
	wantIs(t, err, model.ErrNotFound)
	_, err = e.svc.UpdateModel(t.Context(), 42, ports.ModelUpdate{Name: ptr("x")})
	wantIs(t, err, model.ErrNotFound)
	wantIs(t, e.svc.DeleteModel(t.Context(), 42), model.ErrNotFound)
}

func TestDeleteModel(t *testing.T) {
	e := newEnv(t)
	m := e.model(t, "m", "")
	d := e.device(t, m, `{}`)
	d2 := e.device(t, m, `{}`)
	err := e.svc.DeleteModel(t.Context(), m.ID)
	wantIs(t, err, model.ErrConflict)
	var ce *model.ConflictError
	if !errors.As(err, &ce) || ce.Reason != fmt.Sprintf("device model %d (m) still has 2 devices: delete them first", m.ID) {
		t.Errorf("DeleteModel of a model in use = %v, want a conflict saying how many devices it has", err)
	}
	_, err = e.svc.CreateModel(t.Context(), ports.NewModel{Code: "m", Name: "again"})
	if !errors.As(err, &ce) || ce.Reason != "a device model with code m exists already" {
		t.Errorf("CreateModel of a taken code = %v, want a conflict naming the code", err)
	}
	if err := e.svc.DeleteDevice(t.Context(), d2.ID); err != nil {
		t.Fatal(err)
	}
	err = e.svc.DeleteModel(t.Context(), m.ID)
	if !errors.As(err, &ce) || ce.Reason != fmt.Sprintf("device model %d (m) still has a device: delete it first", m.ID) {
		t.Errorf("DeleteModel with one device left = %v", err)
	}
	if err := e.svc.DeleteDevice(t.Context(), d.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.DeleteModel(t.Context(), m.ID); err != nil {
		t.Fatalf("DeleteModel without devices: %v", err)
	}
	ms, err := e.svc.ListModels(t.Context())
	if err != nil || len(ms) != 0 {
		t.Errorf("ListModels after delete: %v, %v", ms, err)
	}
}

func TestDeleteModelRemovesItsFirmwareBinaries(t *testing.T) {
	e := newEnv(t)
	gone, kept := e.model(t, "gone", ""), e.model(t, "kept", "")
	for _, v := range []string{"1.0.0", "1.1.0"} {
		if _, err := e.svc.UploadFirmware(t.Context(), gone.ID, image(esp32image.ChipESP32C3, v), model.UploadOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.svc.UploadFirmware(t.Context(), kept.ID, image(esp32image.ChipESP32C3, "2.0.0"), model.UploadOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := e.fw.Len(); got != 3 {
		t.Fatalf("%d binaries stored, want 3", got)
	}
	if err := e.svc.DeleteModel(t.Context(), gone.ID); err != nil {
		t.Fatal(err)
	}
	if got := e.fw.Len(); got != 1 {
		t.Errorf("%d binaries after deleting a model with 2, want 1", got)
	}
	if _, b, err := e.svc.OpenFirmware(t.Context(), kept.ID); err != nil {
		t.Errorf("the other model's firmware: %v", err)
	} else {
		b.Close()
	}
}

func TestDeleteModelSurvivesAFailingBlobStore(t *testing.T) {
	e := newEnv(t)
	m := e.model(t, "m", "")
	boom := errors.New("disk gone")
	e.fw.Hook = func(op string) error {
		if op == "DeleteNamespace" {
			return boom
		}
		return nil
	}
	if err := e.svc.DeleteModel(t.Context(), m.ID); err != nil {
		t.Fatalf("DeleteModel with a failing store: %v, want the row deleted and nil", err)
	}
	if _, err := e.svc.GetModel(t.Context(), m.ID); !errors.Is(err, model.ErrNotFound) {
		t.Errorf("model still there: %v", err)
	}
	rep := e.reported()
	if len(rep) != 1 || !errors.Is(rep[0].err, boom) {
		t.Errorf("reported %v, want the store failure once", rep)
	}
}

func TestUpdateModelSchemaCheckedAgainstDevices(t *testing.T) {
	e := newEnv(t)
	m := e.model(t, "m", "")
	ok := e.device(t, m, `{"interval":60}`)
	bad1 := e.device(t, m, `{"interval":"often"}`)
	bad2 := e.device(t, m, `{}`)
	tight := json.RawMessage(`{"type":"object","properties":{"interval":{"type":"integer"}},"required":["interval"]}`)
	_, err := e.svc.UpdateModel(t.Context(), m.ID, ports.ModelUpdate{SetSchema: true, ConfigSchema: tight})
	var ce *model.ConflictError
	if !errors.As(err, &ce) || !strings.Contains(ce.Reason, "2 device(s) of model m") ||
		!strings.Contains(ce.Reason, fmt.Sprintf("device ids %d, %d", bad1.ID, bad2.ID)) || !strings.Contains(ce.Reason, "force=true") {
		t.Fatalf("a schema two devices do not match = %v, want a conflict naming them", err)
	}
	if got, _ := e.svc.GetModel(t.Context(), m.ID); got.ConfigSchema != nil {
		t.Fatalf("the refused schema was stored: %s", got.ConfigSchema)
	}
	// Forced, it holds for writes from now on.
	got, err := e.svc.UpdateModel(t.Context(), m.ID, ports.ModelUpdate{SetSchema: true, ConfigSchema: tight, Force: true})
	if err != nil || got.ConfigSchema == nil {
		t.Fatalf("forced update = %v", err)
	}
	_, err = e.svc.UpdateDevice(t.Context(), bad2.ID, ports.DeviceUpdate{Config: json.RawMessage(`{}`)})
	wantConflictOn(t, err, "config")
	if _, err := e.svc.UpdateDevice(t.Context(), ok.ID, ports.DeviceUpdate{Config: json.RawMessage(`{"interval":5}`)}); err != nil {
		t.Fatal(err)
	}
	// A schema every device matches needs no force; clearing one never does.
	if _, err := e.svc.UpdateModel(t.Context(), m.ID, ports.ModelUpdate{SetSchema: true, ConfigSchema: json.RawMessage(`{"type":"object"}`)}); err != nil {
		t.Errorf("a schema all devices match: %v", err)
	}
	if _, err := e.svc.UpdateModel(t.Context(), m.ID, ports.ModelUpdate{SetSchema: true}); err != nil {
		t.Errorf("clearing the schema: %v", err)
	}
}

func TestSchemaErrorsSpeakTheUsersTerms(t *testing.T) {
	e := newEnv(t)
	_, err := e.svc.CreateModel(t.Context(), ports.NewModel{Code: "s", Name: "n",
		ConfigSchema: json.RawMessage(`{"type":"object","properties":{"n":{"maxLength":-1}}}`)})
	wantValidation(t, err, "config_schema", "at '/properties/n/maxLength'", "want 0")
	if strings.Contains(err.Error(), "urn:") || strings.Contains(err.Error(), "metaschema") || strings.Contains(err.Error(), "json-schema.org") {
		t.Errorf("the error shows internals: %v", err)
	}
}
