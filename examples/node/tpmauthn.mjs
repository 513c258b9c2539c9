// tpmauthn.mjs: what a Node workload needs to connect to NATS through the
// tpmauthn agent on its host, as agent/client does in Go. The agent names
// the caller by its process credentials, so there is no secret here: ask
// GET /v1/whoami for the CONNECT nkey and the session's inbox prefix, and
// have POST /v1/nats/sign sign each server nonce with the workload's TPM
// credential.
//
//   import { connect } from "@nats-io/transport-node";
//   import { natsOptions } from "./tpmauthn.mjs";
//   const { who, options } = await natsOptions("/run/tpmauthn/agent.sock");
//   const nc = await connect({ servers: who.nats_url, ...options });
//
// nats.js calls its authenticator synchronously, while it answers the
// server's INFO, and the agent is reached over a socket, which Node only
// does asynchronously. So the request runs on a worker thread and the
// authenticator waits for it (Atomics.wait): the connection's event loop
// is held for one TPM signature (a real TPM: ~200 ms, up to ~600 ms), as
// libnats's signature callback holds its thread.
import http from "node:http";
import { MessageChannel, Worker, isMainThread, parentPort, receiveMessageOnPort } from "node:worker_threads";

// SIGN_BUDGET_MS is how long the agent may take to sign a nonce (the
// deadline sent in Tpmauthn-Deadline): the rest of the 5 s handshake is
// for the dial, TLS and the verifier's decision (api.NATSSignBudget).
const SIGN_BUDGET_MS = 4000;

// agent does one request on the agent's socket: { status, body } with body
// parsed from JSON.
export function agent(socket, method, path, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? "" : JSON.stringify(body);
    const req = http.request(
      { socketPath: socket, method, path, headers: { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(data), ...headers } },
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (c) => (text += c));
        res.on("end", () => {
          try {
            resolve({ status: res.statusCode, body: JSON.parse(text) });
          } catch {
            resolve({ status: res.statusCode, body: { error: text } });
          }
        });
      },
    );
    req.on("error", reject);
    req.end(data);
  });
}

// refusal is the agent's error body as one line: what it said and its hint.
function refusal(r) {
  return `${r.status}: ${r.body.error}${r.body.hint ? ` (${r.body.hint})` : ""}`;
}

// whoami is how the agent sees this process (api.WhoAmI): workload, host,
// credential_id, nkey, inbox, nats_url, nats_ca, nats_tls_required.
export async function whoami(socket) {
  const r = await agent(socket, "GET", "/v1/whoami");
  if (r.status !== 200) throw new Error(`the tpmauthn agent does not know this program: ${refusal(r)}`);
  return r.body;
}

// sign has the agent sign nonce before deadline (Unix ms); a busy TPM's
// refusal is retried after the wait the agent names, while it fits.
async function sign(socket, nonce, deadline) {
  for (;;) {
    const r = await agent(socket, "POST", "/v1/nats/sign", { nonce }, { "Tpmauthn-Deadline": String(deadline) });
    if (r.status === 200) return r.body;
    const wait = r.body.retry_after_ms;
    if (!wait || Date.now() + wait >= deadline) throw new Error(`the tpmauthn agent did not sign the nonce: ${refusal(r)}`);
    await new Promise((ok) => setTimeout(ok, wait));
  }
}

// signer runs sign on a worker thread and returns a function that waits
// for its answer synchronously: { nkey, sig }, exactly the CONNECT fields.
function signer(socket) {
  const worker = new Worker(new URL(import.meta.url));
  worker.unref(); // the program may exit while the worker waits for work
  return (nonce) => {
    const done = new Int32Array(new SharedArrayBuffer(4));
    const { port1, port2 } = new MessageChannel();
    const deadline = Date.now() + SIGN_BUDGET_MS;
    worker.postMessage({ socket, nonce, deadline, done, port: port2 }, [port2]);
    if (Atomics.wait(done, 0, 0, SIGN_BUDGET_MS + 1000) === "timed-out") throw new Error("the tpmauthn agent did not answer in time");
    const m = receiveMessageOnPort(port1).message;
    port1.close();
    if (m.error) throw new Error(m.error);
    return m.result;
  };
}

// On the worker thread: sign each nonce the main thread sends, then wake
// it.
if (!isMainThread) {
  parentPort.on("message", async ({ socket, nonce, deadline, done, port }) => {
    let m;
    try {
      m = { result: await sign(socket, nonce, deadline) };
    } catch (e) {
      m = { error: e.message };
    }
    port.postMessage(m);
    port.close();
    Atomics.store(done, 0, 1);
    Atomics.notify(done, 0);
  });
}

// natsOptions are nats.js connection options for this process's workload:
// an authenticator whose signature comes from the TPM, the session's own
// inbox prefix (a session may subscribe to no other), and the NATS CA the
// agent verifies the server with. who is the agent's whoami answer.
export async function natsOptions(socket) {
  const who = await whoami(socket);
  const sign = signer(socket);
  const options = {
    authenticator: (nonce) => {
      if (!nonce) throw new Error("the NATS server sent no nonce: is it configured for tpmauthn (auth callout)?");
      const { nkey, sig } = sign(nonce);
      return { nkey, sig };
    },
    inboxPrefix: who.inbox,
    timeout: 5000,
  };
  if (who.nats_ca) options.tls = { ca: who.nats_ca };
  else if (who.nats_tls_required) options.tls = {};
  return { who, options };
}
