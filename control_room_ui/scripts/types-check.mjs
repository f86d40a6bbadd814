// `npm run types:check`: regenerate src/api/schema.d.ts from the contract into a temporary
// file and compare; exit 1 (and say how to fix it) when the committed file is stale.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const committed = join(root, "src/api/schema.d.ts");
const dir = mkdtempSync(join(tmpdir(), "cr-ui-types-"));
const fresh = join(dir, "schema.d.ts");
try {
  const bin = join(root, "node_modules/.bin/openapi-typescript");
  execFileSync(bin, ["../control_room/contract/openapi.yaml", "-o", fresh], {
    cwd: root,
    stdio: ["ignore", "ignore", "inherit"],
  });
  const want = readFileSync(fresh, "utf8");
  const have = existsSync(committed) ? readFileSync(committed, "utf8") : "";
  if (want !== have) {
    console.error(
      "src/api/schema.d.ts is stale: control_room/contract/openapi.yaml changed. " +
        "Run `npm run types` in control_room_ui/ and commit the result.",
    );
    process.exit(1);
  }
  console.log("src/api/schema.d.ts is current");
} finally {
  rmSync(dir, { recursive: true, force: true });
}
