package cliconf

import (
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"

	"github.com/spf13/viper"
)

// ErrUnknownKey marks a config file key that the settings have no field
// for: a typo, most of the time (use errors.Is).
var ErrUnknownKey = errors.New("unknown key")

// checkKeys reads configFile on its own (no defaults, flags or
// environment) and names each of its keys that out, a struct with
// mapstructure tags, has no field for, with the valid key nearest to it:
// all of them at once.
func checkKeys(configFile string, out any) error {
	v := viper.New()
	v.SetConfigFile(configFile)
	if err := v.ReadInConfig(); err != nil {
		return fmt.Errorf("config %s: %w", configFile, err)
	}
	var errs []error
	walkKeys(v.AllSettings(), reflect.TypeOf(out), "", &errs)
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("config %s: %w", configFile, errors.Join(errs...))
}

// walkKeys checks the keys of val, decoded from a config file, against t
// and appends an error for each unknown one; path is val's key ("" at the
// top).
func walkKeys(val any, t reflect.Type, path string, errs *[]error) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := val.(map[string]any)
		if !ok {
			return // a type mismatch: mapstructure says so
		}
		fields, rest := fieldsOf(t)
		names := slices.Sorted(maps.Keys(fields))
		for _, k := range slices.Sorted(maps.Keys(m)) {
			ft, ok := fields[strings.ToLower(k)]
			switch {
			case ok:
				walkKeys(m[k], ft, join(path, k), errs)
			case !rest:
				*errs = append(*errs, unknownKey(path, k, names))
			}
		}
	case reflect.Slice, reflect.Array:
		l, _ := val.([]any)
		for i, e := range l {
			walkKeys(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i), errs)
		}
	case reflect.Map:
		m, _ := val.(map[string]any)
		for _, k := range slices.Sorted(maps.Keys(m)) {
			walkKeys(m[k], t.Elem(), join(path, k), errs)
		}
	}
}

// fieldsOf maps the keys a struct takes (lower-cased: viper and
// mapstructure match them so) to their types; rest reports a ",remain"
// field, which takes any key.
func fieldsOf(t reflect.Type) (fields map[string]reflect.Type, rest bool) {
	fields = map[string]reflect.Type{}
	for f := range t.Fields() {
		name, opts, _ := strings.Cut(f.Tag.Get("mapstructure"), ",")
		switch {
		case strings.Contains(opts, "squash"): // exported or not, as mapstructure does
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			inner, innerRest := fieldsOf(ft)
			maps.Copy(fields, inner)
			rest = rest || innerRest
		case !f.IsExported() || name == "-":
		case strings.Contains(opts, "remain"):
			rest = true
		case name == "":
			fields[strings.ToLower(f.Name)] = f.Type
		default:
			fields[strings.ToLower(name)] = f.Type
		}
	}
	return fields, rest
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// unknownKey says that key (under path) is not one of names, and which of
// them it was probably meant to be.
func unknownKey(path, key string, names []string) error {
	best, bestD := "", -1
	for _, n := range names {
		if d := editDistance(strings.ToLower(key), n); bestD < 0 || d < bestD {
			best, bestD = n, d
		}
	}
	// A suggestion only for a near miss: a third of the key's letters, at
	// least two.
	if bestD >= 0 && bestD <= max(2, len(key)/3) {
		return fmt.Errorf("%w %s; did you mean %s?", ErrUnknownKey, join(path, key), join(path, best))
	}
	return fmt.Errorf("%w %s (valid keys here: %s)", ErrUnknownKey, join(path, key), strings.Join(names, ", "))
}

// editDistance is the optimal string alignment distance of a and b: the
// insertions, deletions, substitutions and swaps of two neighbours that
// turn one into the other (a swap, data_dri for data_dir, counts once).
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	d := make([][]int, len(ra)+1)
	for i := range d {
		d[i] = make([]int, len(rb)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(ra); i++ {
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(ra)][len(rb)]
}
