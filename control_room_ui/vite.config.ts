import { defineConfig } from "vitest/config";
import react from "@vitejs/plugin-react";

// The gateway serves the built files from control_room/gateway/static (docs/ui.md).
// `npm run dev` proxies the API paths to a gateway on 127.0.0.1:8787 (CONTROL_ROOM_GATEWAY_URL).
const gateway = process.env.CONTROL_ROOM_GATEWAY_URL ?? "http://127.0.0.1:8787";
const proxied = ["/rest", "/auth", "/feed", "/artifacts", "/ui-config.json"];

export default defineConfig({
  plugins: [react()],
  build: {
    outDir: "../control_room/gateway/static",
    emptyOutDir: true,
    sourcemap: false,
    assetsDir: "assets",
    chunkSizeWarningLimit: 1024,
  },
  server: {
    proxy: Object.fromEntries(proxied.map((p) => [p, { target: gateway, changeOrigin: false }])),
  },
  test: {
    include: ["src/**/*.test.ts"],
    environment: "node",
  },
});
