// Placing the server's validation messages at the form field they are
// about. espmdm reports a config that misses the model's schema as
// "does not match the model's config_schema: at '/port': must be >= 1; at
// '/': missing property 'ssid'".

/** configFieldErrors maps top-level config properties to messages; "" holds the rest. */
export function configFieldErrors(detail: string): Record<string, string> {
  const out: Record<string, string> = {};
  const add = (k: string, m: string) => {
    out[k] = out[k] ? `${out[k]}; ${m}` : m;
  };
  const idx = detail.indexOf("at '");
  if (idx < 0) {
    add("", detail);
    return out;
  }
  const head = detail.slice(0, idx).replace(/[:;\s]+$/, "");
  if (head) add("", head);
  for (const part of detail.slice(idx).split(/;\s*(?=at ')/)) {
    const m = /^at '([^']*)': (.*)$/s.exec(part.trim());
    if (!m) {
      add("", part.trim());
      continue;
    }
    const [, loc, msg] = m;
    const seg = loc.split("/").filter(Boolean)[0];
    if (seg !== undefined) {
      add(decodeURIComponent(seg.replace(/~1/g, "/").replace(/~0/g, "~")), loc.split("/").filter(Boolean).length > 1 ? `${loc}: ${msg}` : msg);
      continue;
    }
    const missing = /^missing propert(?:y|ies) (.*)$/.exec(msg);
    if (missing) {
      for (const name of missing[1].match(/'[^']*'/g) ?? []) add(name.slice(1, -1), "required");
      continue;
    }
    add("", msg);
  }
  return out;
}
