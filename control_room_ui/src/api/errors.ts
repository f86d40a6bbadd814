// One error type for every call the UI makes: the RPC errors' {code, message, details, hint}
// (PostgREST's shape; `hint` is the machine code), GoTrue's {error_code, msg}, and status 0
// for "the gateway did not answer".
export class ApiError extends Error {
  status: number;
  code: string;
  details: string | null;
  hint: string | null;

  constructor(status: number, code: string, message: string, details: string | null = null, hint: string | null = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.details = details;
    this.hint = hint;
  }

  /** The stable machine code: hint for RPC errors, error_code for GoTrue. */
  get machineCode(): string {
    return this.hint ?? this.code;
  }
}

export type BadState = "expired-session" | "gateway-down" | "not-found" | "forbidden" | null;

/** Which plain bad state an error is, if any. */
export function badStateOf(error: unknown): BadState {
  if (!(error instanceof ApiError)) return error ? "gateway-down" : null;
  if (error.status === 0 || error.status === 502 || error.status === 503 || error.status === 504) return "gateway-down";
  if (error.status === 401) return "expired-session";
  if (error.status === 403) return "forbidden";
  if (error.status === 404) return "not-found";
  return null;
}

/** Parse an error body of any of the shapes the gateway (or Supabase) sends. */
export function errorFromBody(status: number, body: unknown, fallback: string): ApiError {
  if (body && typeof body === "object") {
    const b = body as Record<string, unknown>;
    if (typeof b.message === "string") {
      return new ApiError(status, String(b.code ?? status), b.message, asText(b.details), asText(b.hint));
    }
    if (typeof b.msg === "string" || typeof b.error_description === "string") {
      const code = String(b.error_code ?? b.error ?? status);
      return new ApiError(status, code, String(b.msg ?? b.error_description), null, code);
    }
  }
  return new ApiError(status, String(status), fallback);
}

function asText(v: unknown): string | null {
  if (v === null || v === undefined) return null;
  return typeof v === "string" ? v : JSON.stringify(v);
}

/** The message to show for an error: the server's own words when it gave some. */
export function messageOf(error: unknown): string {
  if (error instanceof ApiError) return error.message;
  if (error instanceof Error) return error.message;
  return String(error);
}
