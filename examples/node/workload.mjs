// workload.mjs: a tpmauthn workload in Node, on nats.js. It asks the agent
// who it is, connects to NATS with a nonce its host's TPM signs through the
// agent (tpmauthn.mjs), publishes on SUBJECT and reads it back.
//
//   (cd examples/node && npm ci)
//   node examples/node/workload.mjs /run/tpmauthn/agent.sock nats://127.0.0.1:4222 demo.greetings
import { connect } from "@nats-io/transport-node";
import { natsOptions } from "./tpmauthn.mjs";

async function main(argv) {
  if (argv.length !== 3) {
    console.error("usage: node workload.mjs AGENT_SOCKET NATS_URL SUBJECT");
    return 2;
  }
  const [socket, url, subject] = argv;
  const { who, options } = await natsOptions(socket);
  console.log(`agent says: workload ${who.workload} on host ${who.host}, credential ${who.credential_id}, nkey ${who.nkey}`);
  const nc = await connect({ servers: url, maxReconnectAttempts: 0, ...options });
  console.log("connected to NATS with a TPM-signed nonce");
  try {
    const sub = nc.subscribe(subject, { max: 1 });
    // A subscription the server refuses closes the subscription with its
    // permissions error; the connection says so too.
    const got = (async () => {
      for await (const m of sub) return m.string();
      throw new Error(`subscription to ${subject} ended without a message`);
    })();
    await nc.flush();
    nc.publish(subject, "hello from Node");
    const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error("no message within 5s")), 5000).unref());
    const text = await Promise.race([got, timeout]);
    console.log(`published and received on ${subject}: "${text}"`);
  } finally {
    await nc.close();
  }
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    console.error(`workload: ${err.message}`);
    process.exit(1);
  },
);
