import { describe, expect, it } from "vitest";
import { configFieldErrors } from "../../src/fieldErrors";
import { rolesOf } from "../../src/auth";
import { parseRoute } from "../../src/router";

describe("configFieldErrors", () => {
  it("puts each schema message at its top-level property", () => {
    expect(configFieldErrors("does not match the model's config_schema: at '/interval_s': minimum: got 0, want 1; at '/': missing properties 'ssid', 'port'")).toEqual({
      "": "does not match the model's config_schema",
      interval_s: "minimum: got 0, want 1",
      ssid: "required",
      port: "required",
    });
  });
  it("keeps the path of a nested problem", () => {
    expect(configFieldErrors("x: at '/net/port': must be <= 65535")).toEqual({ "": "x", net: "/net/port: must be <= 65535" });
  });
  it("leaves a message without location as a whole", () => {
    expect(configFieldErrors("must be a JSON object, not an array")).toEqual({ "": "must be a JSON object, not an array" });
  });
});

describe("rolesOf", () => {
  const tok = (payload: object) => `h.${btoa(JSON.stringify(payload)).replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_")}.s`;
  it("reads realm roles", () => {
    expect(rolesOf(tok({ realm_access: { roles: ["mdm-viewer", "offline_access"] } }))).toEqual(["mdm-viewer", "offline_access"]);
  });
  it("gives no roles for a token it cannot read", () => {
    expect(rolesOf("nonsense")).toEqual([]);
    expect(rolesOf(tok({ realm_access: { roles: "mdm-admin" } }))).toEqual([]);
  });
});

describe("parseRoute", () => {
  it("maps console paths to pages", () => {
    expect(parseRoute("/console/")).toEqual({ page: "devices" });
    expect(parseRoute("/console/devices/12")).toEqual({ page: "device", id: 12 });
    expect(parseRoute("/console/models/3/")).toEqual({ page: "model", id: 3 });
    expect(parseRoute("/console/rotation")).toEqual({ page: "rotation" });
    expect(parseRoute("/console/nope")).toMatchObject({ page: "notfound" });
  });
});
