import AxeBuilder from "@axe-core/playwright";
import { expect, test, type Page } from "@playwright/test";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));

const env = (k: string) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set: TestConsoleBrowser (app/cmd/espmdm) runs these tests`);
  return v;
};
const consoleURL = env("CONSOLE_URL");
const suffix = env("E2E_SUFFIX");
const out = env("E2E_OUT");
const shots = process.env.E2E_SCREENSHOTS;

async function login(page: Page, user: string, password: string) {
  await page.goto(consoleURL);
  await page.getByRole("button", { name: "Log in with Keycloak" }).click();
  // Keycloak's own login page
  await expect(page).toHaveURL(/\/protocol\/openid-connect\/auth/);
  await page.locator("#username").fill(user);
  await page.locator("#password").fill(password);
  await page.locator("#kc-login").click();
  await expect(page.getByRole("button", { name: "Log out" })).toBeVisible();
}

async function noSeriousA11yViolations(page: Page, what: string) {
  const res = await new AxeBuilder({ page }).analyze();
  const bad = res.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  expect(bad.map((v) => `${what}: ${v.id} (${v.impact}): ${v.help} — ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`)).toEqual([]);
}

const model = `e2e_${suffix}`;
const nav = (page: Page, name: string) => page.getByRole("navigation", { name: "Main" }).getByRole("link", { name, exact: true });

test.describe.serial("the console", () => {
  test("an admin manages models, devices, provisioning and rotation", async ({ page }) => {
    const csp: string[] = [];
    page.on("console", (m) => { if (/Content Security Policy/i.test(m.text())) csp.push(m.text()); });
    await page.goto(consoleURL);
    await noSeriousA11yViolations(page, "login page");
    await login(page, env("CONSOLE_USER"), env("CONSOLE_PASSWORD"));
    await expect(page.getByRole("heading", { name: "Devices" })).toBeVisible();
    await expect(page.getByText("console-admin · admin")).toBeVisible();

    // A model with a schema
    await nav(page, "Models").click();
    await expect(page.getByRole("heading", { name: "Device models" })).toBeVisible();
    await noSeriousA11yViolations(page, "models page");
    await page.getByLabel("Code").fill(model);
    await page.getByLabel("Name", { exact: true }).fill("E2E sensor");
    await page.getByLabel(/Config schema/).fill(JSON.stringify({
      type: "object",
      properties: { interval_s: { type: "integer", minimum: 1, description: "seconds between readings" }, label: { type: "string" } },
      required: ["interval_s"],
    }));
    await page.getByRole("button", { name: "Create model" }).click();
    await expect(page.getByRole("heading", { name: `Model ${model}` })).toBeVisible();

    // Firmware upload shows the parsed image
    await page.getByLabel("Application image (.bin)").setInputFiles(env("E2E_IMAGE"));
    await page.getByRole("button", { name: "Upload" }).click();
    const facts = page.getByRole("status").getByLabel("Parsed firmware image");
    await expect(facts).toContainText("esp32");
    await expect(facts).toContainText("1.2.3-e2e");
    await expect(facts).toContainText("console_e2e");
    await expect(page.getByRole("table").filter({ hasText: "1.2.3-e2e" })).toBeVisible();
    // released at once (the "release now" box is checked by default)
    await expect(page.getByRole("status")).toContainText("released");
    await expect(page.getByRole("table").filter({ hasText: "1.2.3-e2e" }).getByText("released", { exact: true })).toBeVisible();
    await expect(page.getByRole("heading", { name: "Recent crashes" })).toBeVisible();
    await expect(page.getByText(/No analysed core dumps in the last 30 days/)).toBeVisible();
    await noSeriousA11yViolations(page, "model page");

    // A device: an invalid config shows the server's message at the field
    await nav(page, "Devices").click();
    await page.getByRole("form", { name: "Create a device" }).getByLabel("Model", { exact: true }).selectOption({ label: `${model} — E2E sensor` });
    await page.getByLabel("interval_s *").fill("0");
    await page.getByRole("button", { name: "Create device" }).click();
    const fieldError = page.locator("#new-device-config-interval_s-error");
    await expect(fieldError).toContainText(/1/);
    await expect(page.getByLabel("interval_s *")).toHaveAttribute("aria-invalid", "true");
    await expect(page.getByText(/The server refused the config \(request id/)).toBeVisible();
    await page.getByLabel("interval_s *").fill("30");
    await page.getByRole("button", { name: "Create device" }).click();
    const heading = page.getByRole("heading", { name: /^Device \d+/ });
    await expect(heading).toBeVisible();
    const id = Number(/\/devices\/(\d+)/.exec(page.url())![1]);
    const clientId = (await heading.locator("code").textContent())!;
    const key = clientId.slice(clientId.lastIndexOf("-") + 1);
    await expect(page.getByText("Exists")).toBeVisible();
    await expect(page.getByRole("heading", { name: "Reported state" })).toBeVisible();
    await expect(page.getByText("No state report yet")).toBeVisible();
    await expect(page.getByRole("heading", { name: "Core dumps" })).toBeVisible();
    await expect(page.getByText("No core dumps: the device has not uploaded one.")).toBeVisible();
    // Tags: typed, saved, shown (sorted by the server)
    await page.getByLabel("Tags", { exact: true }).fill("site:e2e, canary");
    await page.getByRole("button", { name: "Save tags" }).click();
    await expect(page.locator("dl.facts").getByText("site:e2e")).toBeVisible();
    await expect(page.getByLabel("Tags", { exact: true })).toHaveValue("canary site:e2e");
    await noSeriousA11yViolations(page, "device page");

    // Download the partition
    const [dl] = await Promise.all([page.waitForEvent("download"), page.getByRole("button", { name: "Download .bin" }).click()]);
    const file = join(out, "nvs.bin");
    await dl.saveAs(file);
    writeFileSync(join(out, "result.json"), JSON.stringify({ device_id: id, client_id: clientId, key, download: file, size: 0x6000 }));

    // The flashing dialog
    await page.getByRole("button", { name: "Flash over USB…" }).click();
    const dialog = page.getByRole("dialog", { name: /Flash .* over USB/ });
    await expect(dialog).toBeVisible();
    await noSeriousA11yViolations(page, "flashing dialog");
    await dialog.getByRole("button", { name: "Close" }).click();

    // The devices page with the new device
    await nav(page, "Devices").click();
    await expect(page.getByRole("link", { name: clientId })).toBeVisible();
    await page.getByLabel("Tags (all of)").fill("site:e2e");
    await page.getByLabel("Tags (all of)").press("Tab");
    await expect(page).toHaveURL(/tag=site%3Ae2e/);
    await expect(page.getByRole("link", { name: clientId })).toBeVisible();
    await noSeriousA11yViolations(page, "devices page");
    if (shots) await page.screenshot({ path: join(shots, "console-devices.png") });

    // The fleet view: the new device is active and has not reported
    await nav(page, "Fleet").click();
    await expect(page.getByRole("heading", { name: "Fleet by firmware" })).toBeVisible();
    const card = page.locator(".card").filter({ has: page.getByRole("link", { name: model, exact: true }) });
    await expect(card).toContainText("1 active device");
    await expect(card.getByRole("row").filter({ hasText: "not reported" })).toContainText("100 %");
    await noSeriousA11yViolations(page, "fleet page");

    // Many devices at once: they are made and their partitions download as a ZIP
    await nav(page, "Devices").click();
    await page.getByRole("button", { name: "Create many devices…" }).click();
    const batch = page.getByRole("form", { name: "Create devices" });
    await batch.getByLabel("Model", { exact: true }).selectOption({ label: `${model} — E2E sensor` });
    await batch.getByLabel("How many").fill("3");
    await batch.getByLabel("interval_s *").fill("30");
    const [zipDl] = await Promise.all([page.waitForEvent("download"), batch.getByRole("button", { name: "Make them and download the ZIP" }).click()]);
    await zipDl.saveAs(join(out, "batch.zip"));
    await expect(batch.getByRole("status")).toContainText("3 devices made and downloaded");
    await noSeriousA11yViolations(page, "devices page with the batch form");

    // Rotation status and dashboard
    await nav(page, "Rotation").click();
    await expect(page.getByRole("heading", { name: "Credential rotation" })).toBeVisible();
    await expect(page.getByTestId("count-OK")).toHaveText(/^\d+$/);
    await expect(page.getByRole("button", { name: "Rotate all active devices now" })).toBeVisible();
    await noSeriousA11yViolations(page, "rotation page");

    expect(csp).toEqual([]);
    await page.getByRole("button", { name: "Log out" }).click();
    await expect(page.getByRole("button", { name: "Log in with Keycloak" })).toBeVisible();
  });

  test("an admin runs a firmware campaign, watches its waves and aborts it", async ({ page }) => {
    await login(page, env("CONSOLE_USER"), env("CONSOLE_PASSWORD"));
    await nav(page, "Campaigns").click();
    await expect(page.getByRole("heading", { name: "Firmware campaigns" })).toBeVisible();
    await noSeriousA11yViolations(page, "campaigns page");
    // The model's four devices (one made alone, three in the batch), the uploaded image as the target.
    const form = page.getByRole("form", { name: "Start a campaign" });
    await form.getByLabel("Model", { exact: true }).selectOption({ label: `${model} — E2E sensor` });
    await expect(form.getByLabel("Target firmware")).toContainText("1.2.3-e2e");
    await form.getByLabel("Waves (cumulative %)").fill("50 100 10");
    await form.getByRole("button", { name: "Start campaign" }).click();
    await expect(form.locator("#campaign-waves-error")).toContainText(/larger/);
    await form.getByLabel("Waves (cumulative %)").fill("50, 100");
    await form.getByLabel("Soak between waves (seconds)").fill("0");
    await form.getByRole("button", { name: "Start campaign" }).click();
    const heading = page.getByRole("heading", { name: /^Campaign \d+/ });
    await expect(heading).toBeVisible();
    await expect(heading).toContainText("running");
    const campaignId = Number(/\/campaigns\/(\d+)/.exec(page.url())![1]);
    await expect(page.locator(".facts")).toContainText("4 (every active device of the model)");
    await expect(page.locator("li.wave")).toHaveCount(2);
    // The worker starts a wave: its members are assigned and pending (no device reports here).
    await expect(page.locator("li.wave", { hasText: "in progress" })).toHaveCount(1, { timeout: 20_000 });
    await expect(page.locator("li.wave", { hasText: "in progress" }).getByRole("img")).toHaveAccessibleName(/^Wave \d: \d+ members?: \d+ pending$/);
    await expect(page.getByRole("table", { name: /Members/ }).getByRole("row")).toHaveCount(5);
    await page.getByRole("group", { name: "Member state" }).getByRole("button", { name: "succeeded" }).click();
    await expect(page.getByText("No succeeded members.")).toBeVisible();
    await noSeriousA11yViolations(page, "campaign page");
    if (shots) await page.screenshot({ path: join(shots, "console-campaign.png") });
    // Pause, resume, abort.
    await page.getByRole("button", { name: "Pause" }).click();
    await expect(heading).toContainText("paused");
    await page.getByRole("button", { name: "Resume" }).click();
    await expect(heading).toContainText("running");
    await page.getByRole("button", { name: "Abort" }).click();
    const dialog = page.getByRole("dialog", { name: `Abort campaign ${campaignId}?` });
    await dialog.getByRole("button", { name: "Abort" }).click();
    await expect(heading).toContainText("aborted");
    await expect(page.getByTestId("abort-reason")).toContainText("aborted by an admin");
    await expect(page.getByRole("button", { name: "Pause" })).toHaveCount(0);
    await noSeriousA11yViolations(page, "campaign page, aborted");
    await nav(page, "Campaigns").click();
    await page.getByLabel("State", { exact: true }).selectOption("aborted");
    await expect(page.getByRole("row").filter({ has: page.getByRole("link", { name: String(campaignId), exact: true }) })).toContainText(model);
  });

  test("a viewer sees no write controls", async ({ page }) => {
    await login(page, env("CONSOLE_VIEWER_USER"), env("CONSOLE_VIEWER_PASSWORD"));
    await expect(page.getByText("viewer (read only)")).toBeVisible();
    await expect(page.getByRole("link", { name: /^iotdevice-/ }).first()).toBeVisible();
    await expect(page.getByRole("button", { name: "Create device" })).toHaveCount(0);
    await page.getByRole("link", { name: /^iotdevice-/ }).first().click();
    await expect(page.getByRole("heading", { name: /^Device \d+/ })).toBeVisible();
    for (const name of ["Deactivate", "Rotate secret", "Delete…", "Save config", "Repair identity", "Download .bin", "Flash over USB…"]) {
      await expect(page.getByRole("button", { name })).toHaveCount(0);
    }
    await nav(page, "Models").click();
    await expect(page.getByRole("link", { name: model })).toBeVisible();
    await expect(page.getByRole("button", { name: "Create model" })).toHaveCount(0);
    await nav(page, "Fleet").click();
    await expect(page.getByRole("link", { name: model, exact: true })).toBeVisible();
    await nav(page, "Rotation").click();
    await expect(page.getByTestId("count-OK")).toHaveText(/^\d+$/);
    await expect(page.getByRole("button", { name: "Rotate all active devices now" })).toHaveCount(0);
    await noSeriousA11yViolations(page, "rotation page (viewer)");
    await nav(page, "Campaigns").click();
    await expect(page.getByRole("row").filter({ hasText: model })).not.toHaveCount(0);
    await expect(page.getByRole("button", { name: "Start campaign" })).toHaveCount(0);
    await page.getByRole("row").filter({ hasText: model }).first().getByRole("link").click();
    await expect(page.getByTestId("abort-reason")).toBeVisible();
    for (const name of ["Pause", "Resume", "Abort"]) await expect(page.getByRole("button", { name })).toHaveCount(0);
  });
});

test("flashing over USB writes the server's NVS image into the board's nvs partition only", async ({ page }) => {
  const { buildSync } = await import("esbuild");
  const bundle = buildSync({ entryPoints: [join(here, "../test/emulator/browser.ts")], bundle: true, format: "iife", write: false, target: "es2022" });
  const table = Array.from(readFileSync(join(here, "../test/fixtures/partitions/custom_nvs_far.bin")));
  await page.addInitScript(`window.__espTable = ${JSON.stringify(table)};`);
  await page.addInitScript(bundle.outputFiles[0].text);
  await login(page, env("CONSOLE_USER"), env("CONSOLE_PASSWORD"));
  const result = JSON.parse(readFileSync(join(out, "result.json"), "utf8")) as { device_id: number };
  await page.goto(`${consoleURL}devices/${result.device_id}`);
  // a reload logs in again through Keycloak's session (tokens live in memory)
  await page.getByRole("button", { name: "Log in with Keycloak" }).click();
  await page.getByRole("button", { name: "Flash over USB…" }).click();
  const dialog = page.getByRole("dialog", { name: /Flash .* over USB/ });
  await dialog.getByRole("button", { name: "Connect and flash" }).click();
  await expect(dialog.getByRole("status")).toContainText(/Done: ESP32-C3.*partition "nvs" at 0xc000 \(0x5000 bytes\) written and verified/, { timeout: 60_000 });
  const check = await page.evaluate(() => {
    const b = window.__espBoard!, before = window.__espBefore!;
    let outside = 0;
    for (let i = 0; i < b.flash.length; i++) if ((i < 0xc000 || i >= 0x11000) && b.flash[i] !== before[i]) outside++;
    return { outside, nvs: Array.from(b.flash.subarray(0xc000, 0x11000)), writes: b.writes };
  });
  expect(check.outside).toBe(0);
  expect(check.writes).toEqual([{ offset: 0xc000, size: 0x5000, op: "FLASH_DEFL_BEGIN" }]);
  writeFileSync(join(out, "flashed-nvs.bin"), Buffer.from(check.nvs));
  if (shots) await page.screenshot({ path: join(shots, "console-flash.png") });
  await noSeriousA11yViolations(page, "flashing dialog, done");

  // a board without an nvs partition is refused
  await page.evaluate((t) => { window.__espTable = t; }, Array.from(readFileSync(join(here, "../test/fixtures/partitions/no_nvs.bin"))));
  await dialog.getByRole("button", { name: /flash/i }).last().click();
  await expect(dialog.getByRole("alert")).toContainText(/no nvs partition/);
  expect(await page.evaluate(() => window.__espBoard!.writes.length)).toBe(0);
});

test("the API docs page calls the API with the console's login", async ({ page }) => {
  const csp: string[] = [];
  page.on("console", (m) => { if (/Content Security Policy/i.test(m.text())) csp.push(m.text()); });
  const origin = new URL(consoleURL).origin;
  await page.goto(`${origin}/api/docs`);
  await expect(page.getByRole("heading", { name: /espmdm/i }).first()).toBeVisible();
  await page.getByRole("button", { name: "Log in with Keycloak" }).click();
  await page.locator("#username").fill(env("CONSOLE_VIEWER_USER"));
  await page.locator("#password").fill(env("CONSOLE_VIEWER_PASSWORD"));
  await page.locator("#kc-login").click();
  await expect(page).toHaveURL(`${origin}/api/docs`);
  await expect(page.getByText(/Requests are sent as console-viewer \(viewer\)/)).toBeVisible();
  const op = page.locator("#operations-rotation-rotationStatus");
  await op.locator(".opblock-summary").click();
  await op.getByRole("button", { name: "Execute" }).click();
  await expect(op.locator(".live-responses-table tbody .response-col_status").first()).toHaveText("200");
  await expect(op.locator(".live-responses-table")).toContainText("counts_by_state");
  expect(csp).toEqual([]);
});
