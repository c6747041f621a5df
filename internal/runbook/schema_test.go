package runbook

import (
	"bufio"
	"bytes"
	"encoding/json"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"go.yaml.in/yaml/v3"

	"github.com/runbook-dev/runbook/internal/runbook/schema"
	"github.com/runbook-dev/runbook/internal/runbook/strictyaml"
)

func compileSchema(t *testing.T, id string, doc []byte) *jsonschema.Schema {
	t.Helper()
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(doc))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource(id, v); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile(id)
	if err != nil {
		t.Fatalf("compile %s: %v", id, err)
	}
	return s
}

// instance turns a YAML file into the JSON value a schema validates.
func instance(t *testing.T, data []byte) any {
	t.Helper()
	var v any
	if err := yaml.Unmarshal(data, &v); err != nil {
		t.Fatalf("yaml: %v", err)
	}
	j, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("json: %v", err)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(j))
	if err != nil {
		t.Fatal(err)
	}
	return inst
}

// props returns the sorted property names of the schema object at path
// (keys separated by "/").
func props(t *testing.T, doc []byte, path string) []string {
	t.Helper()
	var v any
	if err := json.Unmarshal(doc, &v); err != nil {
		t.Fatal(err)
	}
	for _, k := range strings.Split(path, "/") {
		if k == "" {
			continue
		}
		switch x := v.(type) {
		case map[string]any:
			v = x[k]
		case []any:
			i := int(k[0] - '0')
			v = x[i]
		}
	}
	m, _ := v.(map[string]any)["properties"].(map[string]any)
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	sort.Strings(s)
	return s
}

// TestSchemaKeysMatchDecoder keeps runbook.schema.json in step with the
// keys the decoder accepts, both ways.
func TestSchemaKeysMatchDecoder(t *testing.T) {
	for path, keys := range map[string][]string{
		"":                    runbookKeys,
		"$defs/input":         inputKeys,
		"$defs/step":          stepKeys,
		"$defs/retry/oneOf/1": retryKeys,
		"$defs/batch":         batchKeys,
	} {
		if got, want := props(t, schema.Runbook, path), sorted(keys); !slices.Equal(got, want) {
			t.Errorf("%q: schema has %v, decoder takes %v", path, got, want)
		}
	}
	if got := sorted(inputTypes); !slices.Equal(got, []string{"bool", "duration", "int", "string"}) {
		t.Errorf("input types %v", got)
	}
	checkStrictObjects(t, "runbook.schema.json", schema.Runbook)
}

// checkStrictObjects checks that every object schema with properties
// refuses other keys, as the decoder does.
func checkStrictObjects(t *testing.T, name string, doc []byte) {
	t.Helper()
	var v any
	if err := json.Unmarshal(doc, &v); err != nil {
		t.Fatal(err)
	}
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch x := v.(type) {
		case map[string]any:
			if _, ok := x["properties"]; ok && path != "/$defs/step/allOf" {
				if ap, ok := x["additionalProperties"]; !ok || ap != false {
					t.Errorf("%s%s: object schema without additionalProperties: false", name, path)
				}
			}
			for k, c := range x {
				if k == "properties" {
					for pk, pc := range c.(map[string]any) {
						walk(path+"/properties/"+pk, pc)
					}
					continue
				}
				walk(path+"/"+k, c)
			}
		case []any:
			for _, c := range x {
				walk(path, c)
			}
		}
	}
	walk("", v)
}

// schemaMark reads the "# schema: X" line every invalid file starts with:
// reject (the static schema refuses it), reject-generated (only the
// registry's schema does), accept (no schema can see the problem), n/a
// (not YAML a schema validator can read).
func schemaMark(t *testing.T, data []byte) string {
	t.Helper()
	if bytes.HasPrefix(data, []byte{0xff, 0xfe}) {
		return "n/a" // UTF-16: the mark is not readable as such
	}
	line, _, _ := bufio.NewReader(bytes.NewReader(data)).ReadLine()
	mark, ok := strings.CutPrefix(string(line), "# schema: ")
	if !ok {
		t.Fatalf("first line %q: want # schema: reject|reject-generated|accept|n/a", line)
	}
	return mark
}

// TestSchemaOnTestdata validates every valid file with the schemas, and
// checks each invalid file fails (or not) as its mark says.
func TestSchemaOnTestdata(t *testing.T) {
	runbookS := compileSchema(t, schema.RunbookID, schema.Runbook)
	gen, err := GenerateSchema(testRegistry())
	if err != nil {
		t.Fatal(err)
	}
	genS := compileSchema(t, schema.RunbookID, gen)
	invS := compileSchema(t, schema.InventoryID, schema.Inventory)

	valid, _ := filepath.Glob(filepath.Join(repoRoot, "testdata/valid/*/*.yaml"))
	for _, full := range valid {
		name, _ := filepath.Rel(repoRoot, full)
		inst := instance(t, readRepo(t, name))
		schemas := []*jsonschema.Schema{runbookS, genS}
		if strings.Contains(name, "/inventory/") {
			schemas = []*jsonschema.Schema{invS}
		}
		for _, s := range schemas {
			if err := s.Validate(inst); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}
	}

	counts := map[string]int{}
	for _, c := range corpus(t) {
		if strings.Contains(c.name, "/generated-") {
			continue
		}
		mark := schemaMark(t, c.data)
		counts[mark]++
		if mark == "n/a" {
			if _, _, err := strictyaml.Parse(c.name, c.data); err == nil {
				t.Errorf("%s: marked n/a but parses", c.name)
			}
			continue
		}
		inst := instance(t, c.data)
		static, generated := runbookS, genS
		if c.inventory {
			static, generated = invS, invS
		}
		errS, errG := static.Validate(inst), generated.Validate(inst)
		switch {
		case mark == "reject" && errS == nil:
			t.Errorf("%s: static schema accepts it", c.name)
		case mark == "reject-generated" && (errS != nil || errG == nil || c.inventory):
			t.Errorf("%s: want only the generated schema to reject it: static %v, generated %v", c.name, errS, errG)
		case mark == "accept" && (errS != nil || errG != nil):
			t.Errorf("%s: schema rejects it: %v %v", c.name, errS, errG)
		case mark != "reject" && mark != "reject-generated" && mark != "accept":
			t.Errorf("%s: unknown mark %q", c.name, mark)
		}
	}
	t.Logf("schema marks: %v", counts)
}

func TestGenerateSchema(t *testing.T) {
	gen, err := GenerateSchema(testRegistry())
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Defs map[string]struct {
			Properties map[string]struct {
				Enum []string `json:"enum"`
			} `json:"properties"`
			AllOf []any `json:"allOf"`
		} `json:"$defs"`
	}
	if err := json.Unmarshal(gen, &doc); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range testRegistry().All() {
		names = append(names, s.Name)
		if _, ok := doc.Defs["with:"+s.Name]; !ok {
			t.Errorf("no with: schema for %s", s.Name)
		}
	}
	if got := doc.Defs["step"].Properties["kind"].Enum; !slices.Equal(got, names) {
		t.Errorf("kind enum %v, want %v", got, names)
	}
	if len(doc.Defs["step"].AllOf) != len(names) {
		t.Errorf("%d kind rules", len(doc.Defs["step"].AllOf))
	}
	// Templates pass for every typed parameter.
	s := compileSchema(t, schema.RunbookID, gen)
	inst := instance(t, []byte(`
name: t
steps:
  - id: a
    kind: firewall.drop
    on: gateways
    with: {port: "${{ inputs.port }}", sources: "${{ inputs.src }}", chain: "${{ inputs.chain }}"}
  - id: b
    kind: vault.master_key
    with: {path: x, length: "48", ttl: "${{ inputs.ttl }}"}
`))
	if err := s.Validate(inst); err != nil {
		t.Error(err)
	}
}
