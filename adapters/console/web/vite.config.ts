import { defineConfig } from "vitest/config";

// The console is served by espmdm under /console/ and embedded from
// ../dist (adapters/console's go:embed). Every file under assets/ is named
// by its content hash, which is what lets espmdm serve them immutable.
export default defineConfig({
  base: "/console/",
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  build: {
    outDir: "../dist",
    emptyOutDir: true,
    assetsDir: "assets",
    sourcemap: false,
    // esptool-js's stub flashers are loaded on demand, one per chip.
    chunkSizeWarningLimit: 1600, // swagger-ui, on /api/docs only
    rollupOptions: { input: { main: "index.html", docs: "docs.html" } },
  },
  test: {
    include: ["test/unit/**/*.test.ts", "test/unit/**/*.test.tsx"],
    environment: "node",
  },
});
