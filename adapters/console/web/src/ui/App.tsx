import { useEffect, useMemo, useState } from "preact/hooks";
import { Api } from "../api/client";
import type { Auth, Session } from "../auth";
import { useRoute } from "../router";
import { CampaignPage, CampaignsPage } from "./Campaigns";
import { AppContext, Link } from "./common";
import { DevicePage } from "./Device";
import { DevicesPage } from "./Devices";
import { FleetPage } from "./Fleet";
import { ModelPage, ModelsPage } from "./Models";
import { RotationPage } from "./Rotation";

function Login({ auth, error }: { auth: Auth; error?: string }) {
  return (
    <main id="main" class="login">
      <h1>espmdm console</h1>
      <p>Manage ESP32 device models, devices, their credentials and provisioning.</p>
      {error && <p class="problem" role="alert">{error}</p>}
      <button type="button" class="primary" onClick={() => auth.login()}>Log in with Keycloak</button>
    </main>
  );
}

export function App({ auth, initError }: { auth: Auth; initError?: string }) {
  const [session, setSession] = useState<Session | null>(auth.session());
  useEffect(() => auth.onChange(() => setSession(auth.session())), [auth]);
  const api = useMemo(() => new Api(auth.token), [auth]);
  const route = useRoute();
  if (!session) return <Login auth={auth} error={initError} />;
  const ctx = { api, session };
  const nav = (href: string, label: string, active: boolean) => (
    <li><Link href={href} class={active ? "active" : undefined}>{label}</Link></li>
  );
  let page;
  switch (route.page) {
    case "devices": page = <DevicesPage />; break;
    case "device": page = <DevicePage id={route.id} />; break;
    case "models": page = <ModelsPage />; break;
    case "model": page = <ModelPage id={route.id} />; break;
    case "rotation": page = <RotationPage />; break;
    case "fleet": page = <FleetPage />; break;
    case "campaigns": page = <CampaignsPage />; break;
    case "campaign": page = <CampaignPage id={route.id} />; break;
    default: page = <section><h1>Not found</h1><p>There is no console page at {route.path}.</p></section>;
  }
  return (
    <AppContext.Provider value={ctx}>
      <header>
        <a class="brand" href="/console/">espmdm</a>
        <nav aria-label="Main">
          <ul>
            {nav("/console/devices", "Devices", route.page === "devices" || route.page === "device")}
            {nav("/console/models", "Models", route.page === "models" || route.page === "model")}
            {nav("/console/fleet", "Fleet", route.page === "fleet")}
            {nav("/console/campaigns", "Campaigns", route.page === "campaigns" || route.page === "campaign")}
            {nav("/console/rotation", "Rotation", route.page === "rotation")}
            <li><a href="/api/docs">API docs</a></li>
          </ul>
        </nav>
        <div class="who">
          <span>{session.user} · {session.isAdmin ? "admin" : session.canRead ? "viewer (read only)" : "no espmdm role"}</span>
          <button type="button" onClick={() => auth.logout()}>Log out</button>
        </div>
      </header>
      {!session.canRead && <p class="problem" role="alert">Your account holds neither the admin nor the viewer role: espmdm will refuse every request (403).</p>}
      <main id="main">{page}</main>
    </AppContext.Provider>
  );
}
