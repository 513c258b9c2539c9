// Verifies a tpmauthn registration and assertion with SimpleWebAuthn, an
// implementation independent of go-webauthn, given only the CA root.
//
// usage: node verify.mjs CA.pem REG.json REG_CHALLENGE AS.json AS_CHALLENGE RP_ID ORIGIN [OTHER_CA.pem]
import { readFileSync } from 'node:fs';
import {
  SettingsService,
  verifyAuthenticationResponse,
  verifyRegistrationResponse,
} from '@simplewebauthn/server';

const [caPath, regPath, regChallenge, asPath, asChallenge, rpID, origin, otherCAPath] = process.argv.slice(2);
SettingsService.setRootCertificates({ identifier: 'tpm', certificates: [readFileSync(caPath, 'utf8')] });

const reg = await verifyRegistrationResponse({
  response: JSON.parse(readFileSync(regPath, 'utf8')),
  expectedChallenge: regChallenge,
  expectedOrigin: origin,
  expectedRPID: rpID,
  requireUserVerification: true,
});
if (!reg.verified || reg.registrationInfo.fmt !== 'tpm') {
  throw new Error(`registration not verified as tpm: ${JSON.stringify(reg)}`);
}
const { credential } = reg.registrationInfo;

const auth = await verifyAuthenticationResponse({
  response: JSON.parse(readFileSync(asPath, 'utf8')),
  expectedChallenge: asChallenge,
  expectedOrigin: origin,
  expectedRPID: rpID,
  credential,
  requireUserVerification: true,
});
if (!auth.verified) {
  throw new Error(`assertion not verified: ${JSON.stringify(auth)}`);
}

// The same registration must fail against another root: the check is real.
// (An empty root list would make SimpleWebAuthn skip the path check.)
let rejected = !otherCAPath;
if (otherCAPath) {
  SettingsService.setRootCertificates({ identifier: 'tpm', certificates: [readFileSync(otherCAPath, 'utf8')] });
}
try {
  if (otherCAPath) await verifyRegistrationResponse({
    response: JSON.parse(readFileSync(regPath, 'utf8')),
    expectedChallenge: regChallenge,
    expectedOrigin: origin,
    expectedRPID: rpID,
  });
} catch {
  rejected = true;
}
if (!rejected) {
  throw new Error('registration verified against an unrelated root');
}
console.log(`simplewebauthn: registration fmt=${reg.registrationInfo.fmt} verified; assertion verified, counter=${auth.authenticationInfo.newCounter}`);
