// /api/docs: Swagger UI over espmdm's OpenAPI document. Requests carry the
// token of a console login (PKCE, back to /api/docs) unless the user
// pasted one under Authorize.
import SwaggerUIBundle from "swagger-ui-dist/swagger-ui-bundle.js";
import "swagger-ui-dist/swagger-ui.css";
import { Auth } from "./auth";
import { loadConfig } from "./config";
import "./docs.css";

async function start() {
  const who = document.getElementById("who")!;
  const login = document.getElementById("login") as HTMLButtonElement;
  const logout = document.getElementById("logout") as HTMLButtonElement;
  const cfg = await loadConfig();
  const auth = new Auth(cfg, "/api/docs");
  try {
    await auth.init();
  } catch (e) {
    who.textContent = e instanceof Error ? e.message : String(e);
  }
  const show = () => {
    const s = auth.session();
    login.hidden = !!s;
    logout.hidden = !s;
    if (s) who.textContent = `Requests are sent as ${s.user} (${s.isAdmin ? "admin" : s.canRead ? "viewer" : "no espmdm role"}); a token pasted under Authorize wins.`;
  };
  auth.onChange(show);
  show();
  login.onclick = () => void auth.login("/api/docs");
  logout.onclick = () => void auth.logout();
  const dom = document.getElementById("swagger")!;
  dom.textContent = "";
  SwaggerUIBundle({
    url: "/api/openapi.json",
    domNode: dom,
    deepLinking: false,
    tryItOutEnabled: true,
    requestInterceptor: (r) => {
      const t = auth.token();
      if (t && !r.headers.Authorization && r.url.includes("/api/")) r.headers.Authorization = `Bearer ${t}`;
      return r;
    },
  });
}

void start();
