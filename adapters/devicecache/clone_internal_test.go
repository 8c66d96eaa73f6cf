package devicecache

import (
	"reflect"
	"testing"

	"github.com/espmdm/espmdm/core/model"
)

// TestCloneSharesNothing fills every field of a model.Device (and what it
// points to) and checks that cloneDevice copies it without sharing any
// memory: a field added to model.Device that refers to memory fails here
// until cloneDevice copies it.
func TestCloneSharesNothing(t *testing.T) {
	var d model.Device
	fill(reflect.ValueOf(&d).Elem())
	c := cloneDevice(d)
	if !reflect.DeepEqual(c, d) {
		t.Fatalf("the clone differs from the device:\n got %+v\nwant %+v", c, d)
	}
	shared(t, "Device", reflect.ValueOf(d), reflect.ValueOf(c))
}

// fill sets every settable field of v to a non-zero value, allocating what
// pointers and slices refer to.
func fill(v reflect.Value) {
	switch v.Kind() {
	case reflect.Struct:
		if v.Type().PkgPath() == "time" {
			v.Set(reflect.ValueOf(model.Device{}.CreatedAt.AddDate(2026, 0, 0)).Convert(v.Type()))
			return
		}
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fill(v.Field(i))
			}
		}
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fill(v.Elem())
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 2, 2))
		for i := range 2 {
			fill(v.Index(i))
		}
	case reflect.Map:
		v.Set(reflect.MakeMap(v.Type()))
		k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		fill(k)
		fill(e)
		v.SetMapIndex(k, e)
	case reflect.String:
		v.SetString("x")
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(1)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(1)
	case reflect.Float32, reflect.Float64:
		v.SetFloat(1)
	}
}

// shared fails when a and b (equal values) refer to the same memory
// anywhere.
func shared(t *testing.T, path string, a, b reflect.Value) {
	t.Helper()
	switch a.Kind() {
	case reflect.Struct:
		if a.Type().PkgPath() == "time" {
			return
		}
		for i := range a.NumField() {
			if a.Type().Field(i).IsExported() {
				shared(t, path+"."+a.Type().Field(i).Name, a.Field(i), b.Field(i))
			}
		}
	case reflect.Pointer, reflect.Map:
		if !a.IsNil() && a.UnsafePointer() == b.UnsafePointer() {
			t.Errorf("%s is shared between the device and its clone: copy it in cloneDevice", path)
			return
		}
		if a.Kind() == reflect.Pointer && !a.IsNil() {
			shared(t, path, a.Elem(), b.Elem())
		}
	case reflect.Slice:
		if a.Len() > 0 && a.UnsafePointer() == b.UnsafePointer() {
			t.Errorf("%s is shared between the device and its clone: copy it in cloneDevice", path)
			return
		}
		for i := range a.Len() {
			shared(t, path, a.Index(i), b.Index(i))
		}
	}
}
