// A job's declared params in the launch form, validated and coerced as the CLI does
// (`control-room runs create --job J --param NAME=VALUE`: control_room/specs/loader.py _coerce).
import type { JobParam } from "../api/types";

export type Scalar = string | number | boolean;

const TRUE = new Set(["true", "yes", "on", "1"]);
const FALSE = new Set(["false", "no", "off", "0"]);

/** [value, null] or [null, why not]. */
export function coerceParam(type: string, given: string): [Scalar | null, string | null] {
  const text = given.trim();
  switch (type) {
    case "string":
      return [given, null];
    case "path":
      return text ? [given, null] : [null, "is not a path (empty)"];
    case "integer":
      return /^[+-]?[0-9]+(_[0-9]+)*$/.test(text) ? [parseInt(text.replace(/_/g, ""), 10), null] : [null, "is not an integer"];
    case "number": {
      if (/^[+-]?[0-9]+$/.test(text)) return [parseInt(text, 10), null];
      const n = text === "" ? NaN : Number(text);
      if (Number.isNaN(n) && !/^[+-]?(inf|infinity|nan)$/i.test(text)) return [null, "is not a number"];
      if (!Number.isFinite(n)) return [null, "is not a finite number"];
      return [n, null];
    }
    case "boolean": {
      const l = text.toLowerCase();
      if (TRUE.has(l)) return [true, null];
      if (FALSE.has(l)) return [false, null];
      return [null, "is not a boolean (true or false)"];
    }
    default:
      return [null, `is declared with an unknown type ${JSON.stringify(type)}`];
  }
}

export interface ParamResult {
  values: Record<string, Scalar>;
  errors: Record<string, string>; // by param name ("" for the form)
}

/** The form's values as the run's params: empty fields are left to their defaults; a
 *  required param without a value, or a malformed one, is an error naming it. */
export function validateParams(declared: Record<string, JobParam>, given: Record<string, string>, job: string): ParamResult {
  const values: Record<string, Scalar> = {};
  const errors: Record<string, string> = {};
  for (const [name, text] of Object.entries(given)) {
    const p = declared[name];
    if (!p) {
      errors[name] = `unknown param ${name} of job ${job}`;
      continue;
    }
    if (text === "" || (p.type !== "string" && text.trim() === "")) continue;
    const [value, problem] = coerceParam(p.type, text);
    if (problem !== null || value === null) {
      const shown = text.length <= 60 ? text : text.slice(0, 57) + "...";
      errors[name] = `${JSON.stringify(shown)} ${problem} (param ${name} is ${p.type})`;
      continue;
    }
    values[name] = value;
  }
  for (const [name, p] of Object.entries(declared).sort(([a], [b]) => a.localeCompare(b))) {
    if (p.required && !(name in values) && !errors[name]) errors[name] = `param ${name} of job ${job} has no default: give a value`;
  }
  return { values, errors };
}
