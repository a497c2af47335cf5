// An SMTP server with a per-recipient policy, for the approval tests: nodemailer's real
// `smtp-server` (the library MailDev is built on), answering RCPT TO as a policy file says, as a
// greylisting or a full mailbox would.
//
//   node policy-smtp.mjs PORT POLICY.json MAIL_DIR
//
// POLICY.json is read at every RCPT TO, so a test can change it while the server runs:
//   { "alice@example.com": { "code": 451, "times": 2 },   refused twice, then accepted
//     "bob@example.com": 550 }                             always refused
// An address not in the file is accepted. Every accepted message is written to MAIL_DIR as
// <n>-<recipient>.eml; every RCPT TO is logged on stdout as `RCPT <address> <code>`.
import { SMTPServer } from "smtp-server";
import fs from "node:fs";
import path from "node:path";

const [port, policyFile, mailDir] = process.argv.slice(2);
fs.mkdirSync(mailDir, { recursive: true });
const refusals = new Map();
let written = 0;

function policyFor(address) {
  let policy = {};
  try {
    policy = JSON.parse(fs.readFileSync(policyFile, "utf8"));
  } catch {
    // No file yet, or one being rewritten: accept.
  }
  const rule = policy[address.toLowerCase()];
  if (rule === undefined) return null;
  if (typeof rule === "number") return rule;
  const seen = refusals.get(address) ?? 0;
  if (seen >= rule.times) return null;
  refusals.set(address, seen + 1);
  return rule.code;
}

const server = new SMTPServer({
  authOptional: true,
  disabledCommands: ["STARTTLS"],
  logger: false,
  onRcptTo(address, _session, callback) {
    const code = policyFor(address.address);
    console.log(`RCPT ${address.address} ${code ?? 250}`);
    if (code === null) return callback();
    const err = new Error(code >= 500 ? "mailbox unavailable" : "greylisted, try again later");
    err.responseCode = code;
    callback(err);
  },
  onData(stream, session, callback) {
    const chunks = [];
    stream.on("data", (c) => chunks.push(c));
    stream.on("end", () => {
      for (const rcpt of session.envelope.rcptTo) {
        written += 1;
        fs.writeFileSync(
          path.join(mailDir, `${String(written).padStart(3, "0")}-${rcpt.address}.eml`),
          Buffer.concat(chunks),
        );
      }
      callback();
    });
  },
});
server.listen(Number(port), "127.0.0.1", () => console.log(`listening ${port}`));
