// Client-side routes under /console/ (espmdm answers each with index.html).
import { useEffect, useState } from "preact/hooks";

export type Route =
  | { page: "devices" }
  | { page: "device"; id: number }
  | { page: "models" }
  | { page: "model"; id: number }
  | { page: "rotation" }
  | { page: "fleet" }
  | { page: "campaigns" }
  | { page: "campaign"; id: number }
  | { page: "notfound"; path: string };

export function parseRoute(path: string): Route {
  const p = path.replace(/^\/console\/?/, "").replace(/\/$/, "");
  let m: RegExpExecArray | null;
  if (p === "" || p === "devices") return { page: "devices" };
  if ((m = /^devices\/(\d+)$/.exec(p))) return { page: "device", id: Number(m[1]) };
  if (p === "models") return { page: "models" };
  if ((m = /^models\/(\d+)$/.exec(p))) return { page: "model", id: Number(m[1]) };
  if (p === "rotation") return { page: "rotation" };
  if (p === "fleet") return { page: "fleet" };
  if (p === "campaigns") return { page: "campaigns" };
  if ((m = /^campaigns\/(\d+)$/.exec(p))) return { page: "campaign", id: Number(m[1]) };
  return { page: "notfound", path };
}

export function navigate(to: string) {
  history.pushState(null, "", to);
  dispatchEvent(new PopStateEvent("popstate"));
}

export function useRoute(): Route {
  const [path, setPath] = useState(location.pathname);
  useEffect(() => {
    const f = () => setPath(location.pathname);
    addEventListener("popstate", f);
    return () => removeEventListener("popstate", f);
  }, []);
  return parseRoute(path);
}
