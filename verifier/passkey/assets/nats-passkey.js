// tpmauthn browser client: NATS over WebSocket, every CONNECT signing the
// server's nonce with a passkey, or with a non-extractable WebCrypto P-256
// session key a passkey certified once for the web session (the default).
// The signature travels in the same compact bundle a TPM's does
// (attestation.MarshalBundle), and the verifier checks it the same way.
//
//   import { connect } from "/assets/nats-passkey.js";
//   const nc = await connect();                    // session key (silent)
//   const admin = await connect({ mode: "passkey" }); // a passkey prompt
//
// nats.js asks its authenticator synchronously, before any await is
// possible, so the signing happens in wsFactory: it opens the socket, reads
// INFO, signs its nonce, and hands nats.js a socket that replays INFO
// (research/people.md §2). Every reconnect signs again.
import { wsconnect } from "./nats-core.js";

const enc = new TextEncoder();
const NATS_LABEL = enc.encode("tpmauthn/nats-connect/v1\0");

export const b64url = (b) =>
  btoa(String.fromCharCode(...new Uint8Array(b))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
export const unb64url = (s) =>
  Uint8Array.from(atob(s.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let i = 0;
  for (const p of parts) {
    out.set(p, i);
    i += p.length;
  }
  return out;
}

const sha256 = async (b) => new Uint8Array(await crypto.subtle.digest("SHA-256", b));

export async function postJSON(path, body) {
  const r = await fetch(path, {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify(body ?? {}),
  });
  const j = await r.json();
  if (!r.ok) throw new Error(j.error || r.statusText);
  return j;
}

// bundle is attestation.MarshalBundle: version 1, then u8/u16/u16/u8
// length-prefixed credential ID, authenticatorData, clientDataJSON and DER
// signature.
export function bundle(id, authData, clientData, sig) {
  const u16 = (n) => [n >> 8, n & 255];
  return concat([1, id.length], id, u16(authData.length), authData, u16(clientData.length), clientData, [sig.length], sig);
}

// der turns WebCrypto's raw r‖s (IEEE P1363) into ASN.1 DER.
function der(raw) {
  const int = (b) => {
    let i = 0;
    while (i < b.length - 1 && b[i] === 0) i++;
    b = b.slice(i);
    return b[0] & 0x80 ? concat([2, b.length + 1, 0], b) : concat([2, b.length], b);
  };
  const r = int(raw.slice(0, 32)), s = int(raw.slice(32));
  return concat([0x30, r.length + s.length], r, s);
}

// passkeyAssertion has a passkey (one of allow, or any of the RP's) sign
// challenge, with user verification.
export async function passkeyAssertion(challenge, { rpId, allow }) {
  const cred = await navigator.credentials.get({
    publicKey: {
      challenge, rpId, userVerification: "required", timeout: 60000,
      allowCredentials: (allow || []).map((id) => ({ type: "public-key", id: unb64url(id) })),
    },
  });
  const r = cred.response, id = new Uint8Array(cred.rawId);
  return { id, bundle: bundle(id, new Uint8Array(r.authenticatorData), new Uint8Array(r.clientDataJSON), new Uint8Array(r.signature)) };
}

// The session key lives in IndexedDB as a CryptoKey, which structured
// cloning keeps non-extractable: script on the page can sign with it while
// the page lives, never read it.
function db() {
  return new Promise((resolve, reject) => {
    const rq = indexedDB.open("tpmauthn", 1);
    rq.onupgradeneeded = () => rq.result.createObjectStore("keys");
    rq.onsuccess = () => resolve(rq.result);
    rq.onerror = () => reject(rq.error);
  });
}

async function idb(mode, f) {
  const d = await db();
  return new Promise((resolve, reject) => {
    const tx = d.transaction("keys", mode), rq = f(tx.objectStore("keys"));
    rq.onsuccess = () => resolve(rq.result);
    rq.onerror = () => reject(rq.error);
  });
}

// forget drops this browser's session key of person (or all).
export async function forget(person) {
  await idb("readwrite", (s) => (person ? s.delete(person) : s.clear()));
}

// sessionKey is the person's certified session key, made and certified
// (one passkey prompt) if there is none that lasts another minute.
export async function sessionKey(cfg) {
  let rec = await idb("readonly", (s) => s.get(cfg.person));
  if (rec && new Date(rec.expires).getTime() > Date.now() + 60000) return rec;
  const kp = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"]);
  const spki = new Uint8Array(await crypto.subtle.exportKey("spki", kp.publicKey));
  const begin = await postJSON("/passkeys/session-key/begin", { spki: b64url(spki) });
  const a = await passkeyAssertion(unb64url(begin.challenge), { rpId: begin.rpId, allow: begin.allowCredentials });
  const fin = await postJSON("/passkeys/session-key/finish?ceremony=" + encodeURIComponent(begin.ceremony), { bundle: b64url(a.bundle) });
  rec = { id: fin.id, expires: fin.expires, key: kp.privateKey };
  await idb("readwrite", (s) => s.put(rec, cfg.person));
  return rec;
}

// sessionKeySign builds what an authenticator would: authenticatorData
// (rpIdHash, flags UP|UV, counter 0: the passkey verified the person when
// it certified the key) and clientDataJSON of this page's origin.
async function sessionKeySign(rec, challenge, rpId) {
  const authData = concat(await sha256(enc.encode(rpId)), [0x05, 0, 0, 0, 0]);
  const cd = enc.encode(JSON.stringify({ type: "webauthn.get", challenge: b64url(challenge), origin: location.origin, crossOrigin: false }));
  const raw = new Uint8Array(await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-256" }, rec.key, concat(authData, await sha256(cd))));
  const id = unb64url(rec.id);
  return { id, bundle: bundle(id, authData, cd, der(raw)) };
}

// config is what the verifier tells a signed-in page (/nats/config).
export async function config() {
  const r = await fetch("/nats/config", { credentials: "same-origin" });
  const j = await r.json();
  if (!r.ok) throw new Error(j.error || r.statusText);
  return j;
}

// connect opens a NATS connection over WebSocket for the signed-in person.
// opts.mode: "session_key" (default) or "passkey" (a ceremony per connect,
// for roles with per_connect: passkey); opts.nats: more nats.js options.
export async function connect(opts = {}) {
  const cfg = await config();
  const mode = opts.mode ?? "session_key";
  let pending = null;
  const sign = async (nonce) => {
    const challenge = await sha256(concat(NATS_LABEL, enc.encode(nonce)));
    if (mode === "passkey") return passkeyAssertion(challenge, { rpId: cfg.rpId, allow: cfg.passkeys });
    return sessionKeySign(await sessionKey(cfg), challenge, cfg.rpId);
  };
  const wsFactory = async (url, options) => {
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    const first = await new Promise((resolve, reject) => {
      ws.onmessage = (e) => resolve(e.data);
      ws.onerror = () => reject(new Error("tpmauthn: websocket error"));
      ws.onclose = (e) => reject(new Error("tpmauthn: websocket closed (" + e.code + ")"));
    });
    const txt = new TextDecoder().decode(first);
    const m = /^INFO\s+(\{.*\})\s*\r\n/.exec(txt);
    if (!m) throw new Error("tpmauthn: no INFO from the server");
    const nonce = JSON.parse(m[1]).nonce;
    if (!nonce) throw new Error("tpmauthn: the server sent no nonce");
    const a = await sign(nonce);
    pending = { nonce, nkey: b64url(a.id), sig: b64url(a.bundle) };
    // The session may subscribe to its own inbox only (api.InboxForCredential).
    options.inboxPrefix = "_INBOX.c." + pending.nkey;
    return { socket: replayFirst(ws, first), encrypted: url.startsWith("wss://") };
  };
  const authenticator = (nonce) => {
    if (!pending || pending.nonce !== nonce) throw new Error("tpmauthn: the nonce is not the one signed");
    return { nkey: pending.nkey, sig: pending.sig };
  };
  const nc = await wsconnect({ servers: cfg.ws, timeout: 90000, ...opts.nats, wsFactory, authenticator });
  // Who this connection is, for the operator API's subjects (adminSubject):
  // the credential is the one that signed the latest (re)connect.
  nc.tpmauthn = { person: cfg.person, get credential() { return pending.nkey; } };
  return nc;
}

// adminSubject is where the connection nc asks the operator API for op:
// tpmauthn.admin.p.PERSON.CREDENTIAL.OP, the only subjects its session may
// publish to there (the server enforces it), so the subject says who asks.
export function adminSubject(nc, op) {
  return "tpmauthn.admin.p." + nc.tpmauthn.person + "." + nc.tpmauthn.credential + "." + op;
}

// replayFirst is ws whose first message (INFO, already read) is delivered
// again to the handler nats.js sets.
function replayFirst(ws, first) {
  return {
    get binaryType() { return ws.binaryType; },
    set binaryType(v) { ws.binaryType = v; },
    get readyState() { return ws.readyState; },
    get bufferedAmount() { return ws.bufferedAmount; },
    send: (d) => ws.send(d),
    close: (...a) => ws.close(...a),
    set onopen(_) { /* already open */ },
    set onmessage(f) {
      ws.onmessage = f;
      if (f && first !== null) {
        const d = first;
        first = null;
        queueMicrotask(() => f({ data: d }));
      }
    },
    set onclose(f) { ws.onclose = f; },
    set onerror(f) { ws.onerror = f; },
  };
}
