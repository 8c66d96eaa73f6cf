import { render } from "preact";
import { Auth } from "./auth";
import { loadConfig } from "./config";
import "./styles.css";
import { App } from "./ui/App";

async function start() {
  const root = document.getElementById("app")!;
  let cfg;
  try {
    cfg = await loadConfig();
  } catch (e) {
    root.textContent = `The console could not load its configuration: ${e instanceof Error ? e.message : String(e)}`;
    return;
  }
  const auth = new Auth(cfg);
  let initError: string | undefined;
  try {
    await auth.init();
  } catch (e) {
    initError = e instanceof Error ? e.message : String(e);
    history.replaceState(null, "", "/console/");
  }
  root.textContent = "";
  render(<App auth={auth} initError={initError} />, root);
}

void start();
