/// <reference types="vitest/config" />
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import tailwindcss from "@tailwindcss/vite";
import react from "@vitejs/plugin-react";
import { defineConfig, type Plugin } from "vite";

// Writes a .gz twin of every text file of the build, once the files are on disk (after every other plugin changed
// them): the gateway sends it to clients that accept gzip.
function precompress(): Plugin {
  return {
    name: "chatplane-precompress",
    apply: "build",
    writeBundle(options, bundle) {
      const dir = options.dir ?? "dist";
      for (const name of Object.keys(bundle)) {
        if (!/\.(js|css|html|svg|json)$/.test(name)) continue;
        const path = join(dir, name);
        writeFileSync(`${path}.gz`, gzipSync(readFileSync(path), { level: 9 }));
      }
    },
  };
}

export default defineConfig({
  plugins: [react(), tailwindcss(), precompress()],
  build: {
    target: "es2022",
    sourcemap: false,
    // Nothing inlined as data: URLs (the gateway's CSP allows only this origin's files, plus data: images).
    assetsInlineLimit: 0,
    chunkSizeWarningLimit: 700,
    // No build-time profile in `make` output (it reports slow plugins on a busy machine).
    rolldownOptions: { checks: { pluginTimings: false } },
  },
  server: {
    // `npm run dev`: the API of a running `make run` on the same origin.
    proxy: { "/v1": "http://127.0.0.1:8000" },
  },
  test: {
    environment: "node",
    include: ["src/**/*.test.ts"],
  },
});
