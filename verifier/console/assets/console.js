// The console's script: admin actions, each sent on a NATS connection a
// passkey ceremony signs (the person re-confirms; the operator API checks
// the session's roles and audits the person), and the live audit tail,
// read over NATS with the session key.
import { adminSubject, connect } from "/assets/nats-passkey.js";

const status = (t) => { const s = document.getElementById("status"); if (s) s.textContent = t; };
const enc = new TextEncoder(), dec = new TextDecoder();

async function act(b) {
  b.disabled = true;
  status("Confirm " + b.dataset.op + " with your passkey…");
  let nc;
  try {
    nc = await connect({ mode: "passkey" });
    const m = await nc.request(adminSubject(nc, b.dataset.op),
      enc.encode(JSON.stringify({ id: b.dataset.id, reason: "from the console" })), { timeout: 10000 });
    const code = m.headers && m.headers.get("Nats-Service-Error-Code");
    if (code) throw new Error(code + ": " + (m.headers.get("Nats-Service-Error") || ""));
    status("Done: " + b.dataset.op + " " + b.dataset.id);
    document.body.dataset.done = b.dataset.op;
    setTimeout(() => location.reload(), 300);
  } catch (e) {
    status("Refused: " + e.message);
    document.body.dataset.refused = e.message;
    b.disabled = false;
  } finally {
    if (nc) nc.close();
  }
}

for (const b of document.querySelectorAll("button.act")) b.addEventListener("click", () => act(b));

// The audit tail: audit.read from the next stream message, a few times a
// second, on one silent connection.
const table = document.getElementById("audit");
if (table && table.dataset.next) {
  let next = Number(table.dataset.next);
  const cell = (tr, text, cls) => { const td = tr.insertCell(); td.textContent = text ?? ""; if (cls) td.className = cls; };
  const short = (s) => (s && s.length > 12 ? s.slice(0, 12) + "…" : s || "");
  (async () => {
    const nc = await connect();
    document.getElementById("live").textContent = "● live";
    for (;;) {
      const m = await nc.request(adminSubject(nc, "audit.read"), enc.encode(JSON.stringify({ from: next, max: 200 })), { timeout: 5000 });
      for (const raw of JSON.parse(dec.decode(m.data)) || []) {
        next = Math.max(next, raw.msg + 1);
        if (!raw.data) continue;
        const e = raw.data;
        const tr = table.tBodies[0].insertRow(0);
        cell(tr, e.seq); cell(tr, new Date(e.time).toISOString().slice(0, 16).replace("T", " ") + " UTC"); cell(tr, e.kind);
        cell(tr, e.result, e.result);
        cell(tr, (e.person ? short(e.person) + " " : "") + (e.workload || "") + (e.host ? "@" + short(e.host) : "") + (e.actor ? " by " + e.actor : ""));
        cell(tr, e.reason);
      }
      await new Promise((r) => setTimeout(r, 250));
    }
  })().catch((e) => status("Live tail stopped: " + e.message));
}
