/**
 * The typed error hierarchy shared by the compiler, the runtime and the CLI.
 *
 * Every failure a user can cause (bad input, an unsupported model, a device that is too small)
 * is one of these classes. `cli.ts` turns them into a one-line message and an exit code; any
 * other exception is a bug and is reported as such.
 *
 * @module
 */

/** Exit codes per error class, used by the CLI. */
export const EXIT_CODES = {
  usage: 2,
  input: 3,
  unsupported: 4,
  limit: 5,
  device: 6,
  io: 7,
} as const;

/** Which family of error this is; picks the exit code. */
export type ErrorKind = keyof typeof EXIT_CODES;

/** Base class of every expected moeq error. The message is one line and names the file/field. */
export class MoeqError extends Error {
  /** The error family. */
  readonly kind: ErrorKind;
  /** Creates an error of the given kind. */
  constructor(kind: ErrorKind, message: string, options?: ErrorOptions) {
    super(message.replaceAll("\n", " "), options);
    this.kind = kind;
    this.name = new.target.name;
  }
  /** The process exit code the CLI uses for this error. */
  get exitCode(): number {
    return EXIT_CODES[this.kind];
  }
}

/** Bad command-line flags or API arguments. */
export class UsageError extends MoeqError {
  /** Creates a usage error. */
  constructor(message: string, options?: ErrorOptions) {
    super("usage", message, options);
  }
}

/** A malformed input file: safetensors, config.json, artifact, text, HTTP body. */
export class InputError extends MoeqError {
  /** The file (or request) the problem is in, when known. */
  readonly file?: string;
  /** Creates an input error; `file` is prefixed to the message when given. */
  constructor(message: string, file?: string, options?: ErrorOptions) {
    super("input", file ? `${file}: ${message}` : message, options);
    this.file = file;
  }
}

/** A well-formed input describing something moeq does not support (unknown architecture...). */
export class UnsupportedError extends MoeqError {
  /** Creates an unsupported-model error. */
  constructor(message: string, options?: ErrorOptions) {
    super("unsupported", message, options);
  }
}

/** A resource limit was hit: header too large, model does not fit the adapter, queue full. */
export class LimitError extends MoeqError {
  /** Creates a resource-limit error. */
  constructor(message: string, options?: ErrorOptions) {
    super("limit", message, options);
  }
}

/** WebGPU is missing or failed (no adapter, device lost, shader compile error). */
export class DeviceError extends MoeqError {
  /** Creates a device error. */
  constructor(message: string, options?: ErrorOptions) {
    super("device", message, options);
  }
}

/** The operating system refused a read or write (disk full, permission denied). */
export class IoError extends MoeqError {
  /** Creates an I/O error. */
  constructor(message: string, options?: ErrorOptions) {
    super("io", message, options);
  }
}
