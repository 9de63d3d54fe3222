// API key kinds for `login` (docs/API.md, "Login"). Each kind names its form fields and signs the
// login payload `"{key_id}\n{ts_ms}\n{nonce}"`; the key material stays in this page's memory.
// Another kind (Ed25519, say) is one more entry in KEY_KINDS.

export interface KeyKind {
  id: string;
  label: string;
  /** The secret's form label and placeholder. */
  secretLabel: string;
  /** Hex signature of the payload, as the login's `signature`. */
  sign(secret: string, payload: string): Promise<string>;
}

function hex(bytes: ArrayBuffer): string {
  return [...new Uint8Array(bytes)].map((b) => b.toString(16).padStart(2, '0')).join('');
}

/** HMAC-SHA256 keyed with the secret's own UTF-8 bytes (not hex-decoded), lowercase hex. */
export const HMAC: KeyKind = {
  id: 'hmac',
  label: 'HMAC-SHA256',
  secretLabel: 'secret',
  async sign(secret, payload) {
    const enc = new TextEncoder();
    const key = await crypto.subtle.importKey(
      'raw',
      enc.encode(secret),
      { name: 'HMAC', hash: 'SHA-256' },
      false,
      ['sign'],
    );
    return hex(await crypto.subtle.sign('HMAC', key, enc.encode(payload)));
  },
};

export const KEY_KINDS: KeyKind[] = [HMAC];

export interface Credentials {
  kind: KeyKind;
  keyId: string;
  secret: string;
}

/** The `login` params for these credentials, signed now with a fresh nonce. */
export async function loginParams(c: Credentials): Promise<Record<string, string | number>> {
  const tsMs = Date.now();
  const nonceBytes = crypto.getRandomValues(new Uint8Array(16));
  const nonce = hex(nonceBytes.buffer);
  const signature = await c.kind.sign(c.secret, `${c.keyId}\n${tsMs}\n${nonce}`);
  return { key_id: c.keyId, ts_ms: tsMs, nonce, signature };
}
