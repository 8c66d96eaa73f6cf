import { defineConfig } from "@playwright/test";

// Run by app/cmd/espmdm's TestConsoleBrowser, which starts espmdm on the
// test stack and passes CONSOLE_URL, the users and the files in the
// environment. Debian's Chromium: Playwright downloads no browser here.
export default defineConfig({
  testDir: "./e2e",
  timeout: 90_000,
  expect: { timeout: 15_000 },
  workers: 1,
  retries: 0,
  reporter: "line",
  outputDir: process.env.E2E_OUT ? `${process.env.E2E_OUT}/playwright` : "test-results",
  use: {
    browserName: "chromium",
    headless: true,
    viewport: { width: 1280, height: 860 },
    launchOptions: { executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox", "--disable-gpu", "--disable-quic"] },
    trace: "retain-on-failure",
  },
});
