import { describe, expect, it } from "vitest";
import { Api, ApiError } from "../../src/api/client";

type Call = { url: string; init?: RequestInit };

function fake(res: () => Response) {
  const calls: Call[] = [];
  const api = new Api(() => "tok", async (url, init) => { calls.push({ url, init }); return res(); });
  return { api, calls };
}

const problem = (status: number, body: object, headers: Record<string, string> = {}) =>
  new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/problem+json", ...headers } });

describe("Api", () => {
  it("sends the bearer token and the filters", async () => {
    const { api, calls } = fake(() => Response.json({ devices: [], next_cursor: null }));
    await api.listDevices({ model_id: 3, active: false, rotation_state: "PENDING", limit: 25, cursor: "c1.x" });
    expect(calls[0].url).toBe("/api/devices?model_id=3&active=false&rotation_state=PENDING&limit=25&cursor=c1.x");
    expect((calls[0].init?.headers as Record<string, string>).Authorization).toBe("Bearer tok");
  });

  it("sends the state report filters and asks for the fleet view", async () => {
    const { api, calls } = fake(() => Response.json({ devices: [], next_cursor: null, models: [] }));
    await api.listDevices({ firmware_version: "1.0.0+b", seen_before: "2026-12-06T12:00:00.000Z" });
    expect(calls[0].url).toBe("/api/devices?firmware_version=1.0.0%2Bb&seen_before=2026-12-06T12%3A00%3A00.000Z");
    expect(await api.fleetFirmware()).toEqual({ devices: [], next_cursor: null, models: [] });
    expect(calls[1].url).toBe("/api/fleet/firmware");
  });

  it("turns a problem+json into an ApiError with detail, field and request id", async () => {
    const { api } = fake(() => problem(400, { type: "urn:espmdm:problem:validation", title: "Bad Request", status: 400,
      detail: "config: does not match the model's config_schema: at '/interval_s': minimum: got 0, want 1", field: "config", request_id: "rid-1" }));
    const err = await api.createDevice({ device_model_id: 1, config: {} }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect(err).toMatchObject({ status: 400, title: "Bad Request", field: "config", requestId: "rid-1" });
    expect((err as ApiError).detail).toMatch(/interval_s/);
  });

  it("keeps a 403 a 403 with the server's reason", async () => {
    const { api } = fake(() => problem(403, { title: "Forbidden", status: 403, detail: "this needs the realm role mdm-admin" }, { "X-Request-ID": "rid-2" }));
    await expect(api.triggerRotation()).rejects.toMatchObject({ status: 403, detail: "this needs the realm role mdm-admin", requestId: "rid-2" });
  });

  it("describes an error without a problem body, with the header's request id", async () => {
    const { api } = fake(() => new Response("<html>bad gateway</html>", { status: 502, statusText: "Bad Gateway", headers: { "Content-Type": "text/html", "X-Request-ID": "rid-3" } }));
    await expect(api.listModels()).rejects.toMatchObject({ status: 502, title: "Bad Gateway", requestId: "rid-3", detail: expect.stringMatching(/Keycloak/) });
  });

  it("reports a body that claims JSON but is not", async () => {
    const { api } = fake(() => new Response("{oops", { status: 500, statusText: "Internal Server Error", headers: { "Content-Type": "application/problem+json" } }));
    await expect(api.listModels()).rejects.toMatchObject({ status: 500, title: "Internal Server Error" });
  });

  it("reports a network failure as status 0", async () => {
    const api = new Api(() => undefined, async () => { throw new TypeError("Failed to fetch"); });
    await expect(api.listModels()).rejects.toMatchObject({ status: 0, title: "Network error" });
  });

  it("asks for the NVS image of exactly the partition's size and checks what came", async () => {
    const { api, calls } = fake(() => new Response(new Uint8Array(0x5000), { headers: { "Content-Type": "application/octet-stream" } }));
    expect((await api.provisioningBin(7, 0x5000)).length).toBe(0x5000);
    expect(calls[0].url).toBe("/api/devices/7/provisioning?format=bin&size=0x5000");
    await expect(api.provisioningBin(7, 0x6000)).rejects.toThrow(/sent 20480 bytes for a 24576-byte partition/);
  });

  it("uploads firmware as the raw body", async () => {
    const { api, calls } = fake(() => Response.json({ version: "1" }, { status: 201 }));
    await api.uploadFirmware(2, new Blob([new Uint8Array([0xe9])]));
    expect(calls[0].init?.method).toBe("POST");
    expect(calls[0].url).toBe("/api/device-models/2/firmware");
    expect((calls[0].init?.headers as Record<string, string>)["Content-Type"]).toBe("application/octet-stream");
    await api.uploadFirmware(2, new Blob([new Uint8Array([0xe9])]), true, false);
    expect(calls[1].url).toBe("/api/device-models/2/firmware?force=true&release=false");
  });

  it("releases an upload by its SHA-256", async () => {
    const { api, calls } = fake(() => Response.json({ id: 4, released: true }));
    await api.releaseFirmware(2, "ab".repeat(32));
    expect(calls[0].init?.method).toBe("POST");
    expect(calls[0].url).toBe(`/api/device-models/2/firmware/${"ab".repeat(32)}/release`);
  });

  it("repeats tag for every tag asked, and sends tags with a device", async () => {
    const { api, calls } = fake(() => Response.json({ devices: [], next_cursor: null }));
    await api.listDevices({ model_id: 1, tag: ["site:berlin", "canary"] });
    expect(calls[0].url).toBe("/api/devices?model_id=1&tag=site%3Aberlin&tag=canary");
    await api.updateDevice(5, { tags: ["a"] });
    expect(calls[1].init?.method).toBe("PUT");
    expect(calls[1].init?.body).toBe(`{"tags":["a"]}`);
  });
});
