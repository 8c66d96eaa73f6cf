// The login: OIDC authorization code with PKCE against the realm's public
// client espmdm-console (oidc-client-ts). Tokens live in memory only (a
// reload logs in again through Keycloak's session); they are renewed in
// the background with the refresh token; logout ends the Keycloak session.
import { InMemoryWebStorage, UserManager, WebStorageStateStore, type User } from "oidc-client-ts";
import type { ConsoleConfig } from "./config";

export interface Session {
  user: string;
  roles: string[];
  isAdmin: boolean;
  canRead: boolean;
}

/** rolesOf reads the realm roles from an access token's payload (not verified: the API does that). */
export function rolesOf(accessToken: string): string[] {
  try {
    const payload = accessToken.split(".")[1] ?? "";
    const json = atob(payload.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(payload.length / 4) * 4, "="));
    const claims = JSON.parse(json) as { realm_access?: { roles?: unknown } };
    const roles = claims.realm_access?.roles;
    return Array.isArray(roles) ? roles.filter((r): r is string => typeof r === "string") : [];
  } catch {
    return [];
  }
}

export class Auth {
  private readonly um: UserManager;
  private user: User | null = null;
  private listeners = new Set<() => void>();

  /** home is the page the login returns to: "/console/" (the app) or "/api/docs". */
  constructor(private readonly cfg: ConsoleConfig, private readonly home = "/console/") {
    const here = `${location.origin}${home}`;
    this.um = new UserManager({
      authority: cfg.issuer,
      client_id: cfg.client_id,
      redirect_uri: here,
      post_logout_redirect_uri: here,
      response_type: "code",
      scope: "openid profile",
      userStore: new WebStorageStateStore({ store: new InMemoryWebStorage() }),
      automaticSilentRenew: true,
      loadUserInfo: false,
    });
    this.um.events.addUserLoaded((u) => this.set(u));
    this.um.events.addUserUnloaded(() => this.set(null));
    this.um.events.addAccessTokenExpired(() => this.set(null));
    this.um.events.addSilentRenewError(() => this.set(null));
  }

  private set(u: User | null) {
    this.user = u;
    this.listeners.forEach((l) => l());
  }

  onChange(l: () => void): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  /** init finishes a login redirect when the URL carries one; returns the path to show. */
  async init(): Promise<string> {
    const q = new URLSearchParams(location.search);
    if (q.has("code") && q.has("state")) {
      const u = await this.um.signinRedirectCallback();
      this.set(u);
      const path = typeof u.state === "string" && u.state.startsWith(this.home) ? u.state : this.home;
      history.replaceState(null, "", path);
      return path;
    }
    if (q.has("error")) {
      throw new Error(`Keycloak refused the login: ${q.get("error_description") ?? q.get("error")}`);
    }
    return location.pathname;
  }

  login(path = location.pathname): Promise<void> {
    return this.um.signinRedirect({ state: path });
  }

  async logout(): Promise<void> {
    const u = this.user;
    await this.um.removeUser();
    await this.um.signoutRedirect({ id_token_hint: u?.id_token });
  }

  token = (): string | undefined => (this.user && !this.user.expired ? this.user.access_token : undefined);

  session(): Session | null {
    if (!this.user || this.user.expired) return null;
    const roles = rolesOf(this.user.access_token);
    const isAdmin = roles.includes(this.cfg.admin_role);
    const profile = this.user.profile;
    return {
      user: profile.preferred_username ?? profile.sub,
      roles,
      isAdmin,
      canRead: isAdmin || roles.includes(this.cfg.viewer_role),
    };
  }
}
