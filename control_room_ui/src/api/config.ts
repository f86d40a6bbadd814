// Where the API and GoTrue live: /ui-config.json from the gateway ({"api_url":"",
// "auth_url":"","anon_key":null}); empty URLs mean this origin. A Supabase deployment points
// both at the project (https://<ref>.supabase.co) and gives its anon key.
export interface UiConfig {
  api_url: string;
  auth_url: string;
  anon_key: string | null;
}

let config: UiConfig = { api_url: "", auth_url: "", anon_key: null };

export async function loadConfig(): Promise<UiConfig> {
  try {
    const res = await fetch("/ui-config.json", { headers: { Accept: "application/json" } });
    if (res.ok) {
      const body = (await res.json()) as Partial<UiConfig>;
      config = {
        api_url: trimSlash(body.api_url ?? ""),
        auth_url: trimSlash(body.auth_url ?? ""),
        anon_key: body.anon_key ?? null,
      };
    }
  } catch {
    // the gateway is down: keep same-origin defaults; the first call shows the bad state
  }
  return config;
}

export function getConfig(): UiConfig {
  return config;
}

export function setConfig(next: UiConfig): void {
  config = next;
}

function trimSlash(url: string): string {
  return url.replace(/\/+$/, "");
}

export function restUrl(path: string): string {
  return `${config.api_url}${path}`;
}

export function authUrl(path: string): string {
  return `${config.auth_url || config.api_url}/auth/v1${path}`;
}
