// A client of the gateway's public WebSocket API (docs/API.md): requests with ids, their answers
// as promises, pushes to one handler, and reconnection with capped, jittered back-off.

/** An error answer, `{code, message, retry_after_ms?}`; `connection_closed` is the page's own. */
export class ApiError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly retryAfterMs?: number,
  ) {
    super(message);
  }
}

export type Push = Record<string, unknown> & { channel: string };

export interface Handlers {
  /** The socket is open: (re)subscribe and log in again here. */
  onOpen(): void;
  onClose(code: number, reason: string): void;
  onPush(push: Push): void;
  /** An error answer without an `id` (the gateway could not read the request's). */
  onOrphanError(error: ApiError): void;
}

interface Pending {
  resolve(result: unknown): void;
  reject(error: ApiError): void;
}

const BACKOFF_FIRST_MS = 250;
const BACKOFF_MAX_MS = 4_000;

export class Api {
  private socket: WebSocket | null = null;
  private nextId = 1;
  private pending = new Map<number, Pending>();
  private backoffMs = BACKOFF_FIRST_MS;
  private stopped = false;
  /** Sockets opened, the first included: the page shows reconnections. */
  connects = 0;

  constructor(
    private readonly url: string,
    private readonly handlers: Handlers,
  ) {}

  get open(): boolean {
    return this.socket?.readyState === WebSocket.OPEN;
  }

  connect(): void {
    const socket = new WebSocket(this.url);
    this.socket = socket;
    socket.onopen = () => {
      this.backoffMs = BACKOFF_FIRST_MS;
      this.connects += 1;
      this.handlers.onOpen();
    };
    socket.onmessage = (event: MessageEvent<string>) => this.receive(event.data);
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      const closed = new ApiError('connection_closed', `connection closed (${event.code})`);
      for (const p of this.pending.values()) p.reject(closed);
      this.pending.clear();
      this.handlers.onClose(event.code, event.reason);
      if (this.stopped) return;
      const delay = this.backoffMs * (0.5 + Math.random() / 2);
      this.backoffMs = Math.min(this.backoffMs * 2, BACKOFF_MAX_MS);
      setTimeout(() => this.connect(), delay);
    };
  }

  request<T = Record<string, unknown>>(method: string, params?: object): Promise<T> {
    const socket = this.socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      return Promise.reject(new ApiError('connection_closed', 'not connected to the gateway'));
    }
    const id = this.nextId++;
    const frame = params === undefined ? { id, method } : { id, method, params };
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (r: unknown) => void, reject });
      socket.send(JSON.stringify(frame));
    });
  }

  private receive(text: string): void {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(text) as Record<string, unknown>;
    } catch {
      return;
    }
    if (typeof msg.channel === 'string') {
      this.handlers.onPush(msg as Push);
      return;
    }
    const error = msg.error as { code: string; message: string; retry_after_ms?: number } | undefined;
    const apiError = error && new ApiError(error.code, error.message, error.retry_after_ms);
    if (typeof msg.id !== 'number') {
      if (apiError) this.handlers.onOrphanError(apiError);
      return;
    }
    const p = this.pending.get(msg.id);
    if (!p) return;
    this.pending.delete(msg.id);
    if (apiError) p.reject(apiError);
    else p.resolve(msg.result);
  }
}
