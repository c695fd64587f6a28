/**
 * The logging that engines and the service need: pino's calling convention (fields first, then the message), so that
 * the server's pino logger is passed in as is and tests can pass a collector. Nothing logged may carry an API key or
 * an upstream's URL.
 */
export interface Log {
  debug(fields: object, message: string): void;
  info(fields: object, message: string): void;
  warn(fields: object, message: string): void;
  error(fields: object, message: string): void;
}

export const SILENT_LOG: Log = {
  debug() {},
  info() {},
  warn() {},
  error() {},
};
