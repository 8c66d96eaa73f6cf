/** ConsoleConfig is what espmdm serves at /console/config.json. */
export interface ConsoleConfig {
  issuer: string;
  client_id: string;
  admin_role: string;
  viewer_role: string;
}

export async function loadConfig(): Promise<ConsoleConfig> {
  const res = await fetch("/console/config.json", { headers: { Accept: "application/json" } });
  if (!res.ok) throw new Error(`GET /console/config.json: HTTP ${res.status}`);
  return (await res.json()) as ConsoleConfig;
}
