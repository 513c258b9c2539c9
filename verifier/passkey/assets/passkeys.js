// The passkeys and sign-in pages: create a passkey, sign in with one.
import { postJSON } from "./nats-passkey.js";

const status = (t) => { document.getElementById("status").textContent = t; };

async function register() {
  status("Creating a passkey…");
  const begin = await postJSON("/passkeys/register/begin", { label: document.getElementById("label").value });
  const cred = await navigator.credentials.create({ publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(begin.publicKey) });
  await postJSON("/passkeys/register/finish?ceremony=" + encodeURIComponent(begin.ceremony), cred.toJSON());
  location.reload();
}

async function signIn(btn) {
  status("Waiting for your passkey…");
  const begin = await postJSON("/signin/begin");
  const cred = await navigator.credentials.get({ publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(begin.publicKey) });
  await postJSON("/signin/finish?ceremony=" + encodeURIComponent(begin.ceremony), cred.toJSON());
  location.assign(btn.dataset.next || "/passkeys");
}

const on = (id, f) => {
  const el = document.getElementById(id);
  if (el) el.addEventListener("click", () => f(el).catch((e) => status("Failed: " + e.message)));
};
on("register", register);
on("signin", signIn);
