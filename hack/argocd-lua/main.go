// argocd-lua evaluates Argo CD resource health scripts the way Argo CD v3.6.1 does
// (util/lua/lua.go: VM.runLua and VM.ExecuteHealthLua), for the tests of deploy/argocd/health.
//
// Input on stdin: {"scripts": {"<kind>": "<lua>"}, "cases": [{"kind": "...", "obj": {...}}]}.
// Output on stdout: one JSON object per case, in order: {"status", "message"} or {"error"}.
//
// Like Argo CD: a fresh LState per evaluation with package, base, table and the safe os library
// only (SkipOpenLibs), a one-second context, the object as the global `obj` (decodeValue), and the
// returned table encoded with gopher-json into a health status whose code must be a known one.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
	luajson "layeh.com/gopher-json"
)

type input struct {
	Scripts map[string]string `json:"scripts"`
	Cases   []struct {
		Kind string         `json:"kind"`
		Obj  map[string]any `json:"obj"`
	} `json:"cases"`
}

type result struct {
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
	Error   string `json:"error,omitempty"`
}

var validStatuses = map[string]bool{
	"Healthy": true, "Progressing": true, "Suspended": true, "Degraded": true, "Missing": true, "Unknown": true,
}

// decodeValue is Argo CD's: JSON values to Lua values (numbers arrive as float64 from encoding/json,
// as int64 from Kubernetes' unstructured decoder; both become LNumber).
func decodeValue(l *lua.LState, value any) lua.LValue {
	switch converted := value.(type) {
	case bool:
		return lua.LBool(converted)
	case float64:
		return lua.LNumber(converted)
	case string:
		return lua.LString(converted)
	case json.Number:
		return lua.LString(converted)
	case int:
		return lua.LNumber(converted)
	case int64:
		return lua.LNumber(converted)
	case []any:
		arr := l.CreateTable(len(converted), 0)
		for _, item := range converted {
			arr.Append(decodeValue(l, item))
		}
		return arr
	case map[string]any:
		tbl := l.CreateTable(0, len(converted))
		for key, item := range converted {
			tbl.RawSetH(lua.LString(key), decodeValue(l, item))
		}
		return tbl
	case nil:
		return lua.LNil
	}
	return lua.LNil
}

func evaluate(obj map[string]any, script string) result {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, pair := range []struct {
		n string
		f lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.OsLibName, OpenSafeOs},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(pair.f), NRet: 0, Protect: true}, lua.LString(pair.n)); err != nil {
			panic(err)
		}
	}
	l.PreloadModule(lua.OsLibName, SafeOsLoader)
	ctx, cancel := context.WithTimeout(context.Background(), 1*time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", decodeValue(l, obj))
	if err := l.DoString(script); err != nil {
		return result{Error: err.Error()}
	}
	returned := l.Get(-1)
	if returned.Type() != lua.LTTable {
		return result{Error: fmt.Sprintf("expect table output from Lua script, not %s", returned.Type())}
	}
	encoded, err := luajson.Encode(returned)
	if err != nil {
		return result{Error: err.Error()}
	}
	var hs struct {
		Status  string `json:"status"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal(encoded, &hs); err != nil {
		return result{Error: err.Error()}
	}
	if !validStatuses[hs.Status] {
		return result{Status: "Unknown", Message: "Lua returned an invalid health status"}
	}
	return result{Status: hs.Status, Message: hs.Message}
}

func main() {
	var in input
	if err := json.NewDecoder(bufio.NewReader(os.Stdin)).Decode(&in); err != nil {
		fmt.Fprintln(os.Stderr, "argocd-lua: reading input:", err)
		os.Exit(2)
	}
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	enc := json.NewEncoder(out)
	for _, c := range in.Cases {
		script, ok := in.Scripts[c.Kind]
		if !ok {
			fmt.Fprintln(os.Stderr, "argocd-lua: no script for kind", c.Kind)
			os.Exit(2)
		}
		if err := enc.Encode(evaluate(c.Obj, script)); err != nil {
			panic(err)
		}
	}
}
