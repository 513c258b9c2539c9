// The parts of @nats-io/nats-core the browser client (nats-passkey.js) uses.
export { wsconnect, headers, Events } from "@nats-io/nats-core";
