// Editing a device config against its model's JSON Schema: one input per
// top-level property of a simple type, and the whole object as JSON. The
// server's validation messages are shown at the field they are about.
import { useEffect, useState } from "preact/hooks";
import { Field } from "./common";

interface PropSchema {
  type?: string | string[];
  enum?: unknown[];
  description?: string;
  title?: string;
  minimum?: number;
  maximum?: number;
}

function simpleProps(schema: unknown): [string, PropSchema][] {
  if (!schema || typeof schema !== "object") return [];
  const props = (schema as { properties?: Record<string, PropSchema> }).properties;
  if (!props) return [];
  return Object.entries(props).filter(([, p]) => {
    const t = Array.isArray(p.type) ? p.type.filter((x) => x !== "null")[0] : p.type;
    return t === "string" || t === "integer" || t === "number" || t === "boolean";
  });
}

function typeOf(p: PropSchema): string {
  return (Array.isArray(p.type) ? p.type.filter((x) => x !== "null")[0] : p.type) ?? "string";
}

export function ConfigEditor({ id, schema, value, onChange, errors }: {
  id: string; schema: unknown; value: Record<string, unknown>; onChange: (v: Record<string, unknown>) => void; errors: Record<string, string>;
}) {
  const [text, setText] = useState(JSON.stringify(value, null, 2));
  const [parseError, setParseError] = useState("");
  useEffect(() => {
    // keep the JSON in step with the fields (unless the user is mid-edit with invalid JSON)
    if (!parseError) setText(JSON.stringify(value, null, 2));
  }, [value]); // eslint-disable-line react-hooks/exhaustive-deps
  const required = new Set(((schema as { required?: string[] } | null)?.required) ?? []);
  const props = simpleProps(schema);
  const known = new Set(props.map(([k]) => k));
  const rest = Object.entries(errors).filter(([k]) => !known.has(k)).map(([k, m]) => (k ? `${k}: ${m}` : m));
  const set = (k: string, v: unknown) => {
    const next = { ...value };
    if (v === undefined) delete next[k];
    else next[k] = v;
    setParseError("");
    onChange(next);
  };
  return (
    <fieldset class="config-editor">
      <legend>Config</legend>
      {props.map(([k, p]) => {
        const fid = `${id}-${k}`;
        const t = typeOf(p);
        const label = `${p.title ?? k}${required.has(k) ? " *" : ""}`;
        const err = errors[k];
        const aria = { "aria-invalid": err ? true : undefined, "aria-describedby": err ? `${fid}-error` : undefined };
        let input;
        if (p.enum) {
          input = (
            <select id={fid} {...aria} value={value[k] === undefined ? "" : String(value[k])}
              onChange={(e) => { const s = e.currentTarget.value; set(k, s === "" ? undefined : p.enum!.find((x) => String(x) === s)); }}>
              <option value="">(not set)</option>
              {p.enum.map((x) => <option value={String(x)}>{String(x)}</option>)}
            </select>
          );
        } else if (t === "boolean") {
          input = <input id={fid} type="checkbox" {...aria} checked={value[k] === true} onChange={(e) => set(k, e.currentTarget.checked)} />;
        } else if (t === "integer" || t === "number") {
          input = (
            <input id={fid} type="number" step={t === "integer" ? 1 : "any"} min={p.minimum} max={p.maximum} {...aria}
              value={typeof value[k] === "number" ? String(value[k]) : ""}
              onInput={(e) => { const s = e.currentTarget.value; set(k, s === "" ? undefined : Number(s)); }} />
          );
        } else {
          input = <input id={fid} type="text" {...aria} value={typeof value[k] === "string" ? (value[k] as string) : ""}
            onInput={(e) => { const s = e.currentTarget.value; set(k, s === "" && !required.has(k) ? undefined : s); }} />;
        }
        return <Field label={label} id={fid} error={err} hint={p.description}>{input}</Field>;
      })}
      <Field label={props.length ? "Config as JSON" : "Config (JSON object)"} id={`${id}-json`} error={parseError || rest.join("; ") || undefined}>
        <textarea id={`${id}-json`} rows={Math.min(14, Math.max(4, text.split("\n").length + 1))} spellcheck={false}
          aria-invalid={parseError || rest.length ? true : undefined} aria-describedby={parseError || rest.length ? `${id}-json-error` : undefined}
          value={text}
          onInput={(e) => {
            const s = e.currentTarget.value;
            setText(s);
            try {
              const v = JSON.parse(s) as unknown;
              if (!v || typeof v !== "object" || Array.isArray(v)) throw new Error("the config must be a JSON object");
              setParseError("");
              onChange(v as Record<string, unknown>);
            } catch (err) {
              setParseError(err instanceof Error ? err.message : String(err));
            }
          }} />
      </Field>
    </fieldset>
  );
}
