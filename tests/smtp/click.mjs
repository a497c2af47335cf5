// Plays a real approver: opens an approval link in headless Chromium, types a comment, presses
// the page's button, waits for the outcome, takes a screenshot and prints what the page shows.
//
//   node click.mjs URL SCREENSHOT.png [--comment TEXT] [--expect TEXT] [--width N] [--height N]
//                  [--before SCREENSHOT.png]
//
// Prints one JSON line: {"status", "title", "text", "before", "url"} where `before` is the
// confirmation page's visible text and `text` the outcome page's. Exits 1 on any failure.

import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";

function usage(msg) {
  console.error(`click.mjs: ${msg}\nusage: node click.mjs URL SCREENSHOT.png [--comment TEXT] [--expect TEXT] [--width N] [--height N] [--before SHOT.png]`);
  process.exit(2);
}

const args = process.argv.slice(2);
const positional = [];
const opts = { comment: "", expect: "", width: 390, height: 844, before: "" };
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a.startsWith("--")) {
    const key = a.slice(2);
    if (!(key in opts) || i + 1 >= args.length) usage(`unknown or incomplete option ${a}`);
    opts[key] = typeof opts[key] === "number" ? Number(args[++i]) : args[++i];
  } else {
    positional.push(a);
  }
}
if (positional.length !== 2) usage("need URL and SCREENSHOT");
const [url, shot] = positional;

const executablePath = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const profile = mkdtempSync(join(tmpdir(), "runner-click-"));
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    timeout: 30_000,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    viewport: { width: opts.width, height: opts.height },
    deviceScaleFactor: 2,
    isMobile: opts.width < 600,
    hasTouch: opts.width < 600,
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(20_000);
  const response = await page.goto(url, { waitUntil: "load" });
  const before = await page.locator("body").innerText();
  if (opts.before) await page.screenshot({ path: opts.before, fullPage: true });
  if (opts.comment) await page.fill("textarea[name=comment]", opts.comment);
  const [answer] = await Promise.all([
    page.waitForNavigation({ waitUntil: "load" }),
    page.click("form button[type=submit]"),
  ]);
  if (opts.expect) await page.getByText(opts.expect).first().waitFor({ state: "visible" });
  await page.screenshot({ path: shot, fullPage: true });
  const text = await page.locator("body").innerText();
  console.log(
    JSON.stringify({
      status: answer?.status() ?? null,
      first_status: response?.status() ?? null,
      title: await page.title(),
      text,
      before,
      url: page.url(),
    }),
  );
} catch (error) {
  console.error(`click.mjs: ${error?.stack ?? error}`);
  process.exitCode = 1;
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
