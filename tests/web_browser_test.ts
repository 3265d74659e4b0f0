/// <reference lib="dom" />
/**
 * The web client end to end, in a real headless Chromium driven by puppeteer-core: browser pages
 * and TLS clients in one room, history, presence, HTML shown as text, reconnecting across a server
 * restart, a member list sent in parts, and a refused login. One browser is shared by the steps
 * (each user gets its own browser context, so storage is not shared).
 *
 * With `UPDATE_SCREENSHOT=1` the first step also writes `docs/web-client.png` (the README's
 * picture of the page); otherwise nothing is written outside a temp dir.
 *
 * @module
 */
import assert from "node:assert/strict";
import puppeteer, { type Browser, type Page } from "puppeteer-core";
import { type HistoryStore, openStore } from "../src/room/store.ts";
import { ChatServer } from "../src/server/server.ts";
import { delay, type Frame, PASSWORD, testCerts, TestClient } from "./_helpers.ts";

const CHROMIUM = "/usr/bin/chromium";
const SCREENSHOT = new URL("../docs/web-client.png", import.meta.url);
/** Generous for a loaded machine; the happy paths take milliseconds. */
const WAIT_MS = 10_000;

function hasChromium(): boolean {
  try {
    return Deno.statSync(CHROMIUM).isFile;
  } catch {
    return false;
  }
}

/** A server with its web port; `close()` stops it. */
interface Chat {
  server: ChatServer;
  port: number;
  webPort: number;
  url: string;
}

async function startChat(
  store: HistoryStore,
  ports: { port?: number; webPort?: number } = {},
): Promise<Chat> {
  const { cert, key } = await testCerts();
  const server = new ChatServer({
    hostname: "127.0.0.1",
    port: ports.port ?? 0,
    cert,
    key,
    password: PASSWORD,
    history: store,
    // Enough for the paging step's burst; the pages pace themselves to whatever welcome says.
    limits: { rate: 100, burst: 100 },
    web: { port: ports.webPort ?? 0 },
  });
  const { port } = await server.listen();
  const webPort = server.webAddr!.port;
  return { server, port, webPort, url: `https://127.0.0.1:${webPort}/` };
}

/** A page of one user, with what it reported that a test must not see. */
interface UserPage {
  page: Page;
  dialogs: string[];
  errors: string[];
}

async function openPage(
  browser: Browser,
  viewport = { width: 1000, height: 640 },
): Promise<UserPage> {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  await page.setViewport(viewport);
  const user: UserPage = { page, dialogs: [], errors: [] };
  page.on("dialog", (dialog) => {
    user.dialogs.push(dialog.message());
    dialog.dismiss().catch(() => {});
  });
  page.on("pageerror", (error) => user.errors.push(String(error)));
  page.on("console", (message) => {
    // A WebSocket that cannot connect while the server is down is expected; nothing else is.
    if (message.type() === "error" && !/WebSocket connection to/.test(message.text())) {
      user.errors.push(message.text());
    }
  });
  return user;
}

async function login(user: UserPage, url: string, name: string, password = PASSWORD) {
  await user.page.goto(url);
  await user.page.waitForSelector("#login-form");
  await user.page.type("#login-name", name);
  await user.page.type("#login-password", password);
  await user.page.keyboard.press("Enter");
}

async function joinAs(browser: Browser, url: string, name: string, viewport?: {
  width: number;
  height: number;
}): Promise<UserPage> {
  const user = await openPage(browser, viewport);
  await login(user, url, name);
  await user.page.waitForSelector("#chat-view:not([hidden])");
  await user.page.waitForFunction(() =>
    document.querySelector("#log-start:not([hidden])") ||
    document.querySelector("#older:not([hidden])")
  );
  return user;
}

/** Types `text` into the message box (`\n` as Shift+Enter) and sends it with Enter. */
async function say(user: UserPage, text: string) {
  const lines = text.split("\n");
  for (const [i, line] of lines.entries()) {
    if (i > 0) {
      await user.page.keyboard.down("Shift");
      await user.page.keyboard.press("Enter");
      await user.page.keyboard.up("Shift");
    }
    await user.page.type("#message", line);
  }
  await user.page.keyboard.press("Enter");
}

/** A message as the page shows it. */
interface Shown {
  id: number | null;
  sender: string;
  ip: string;
  text: string;
  own: boolean;
  pending: boolean;
}

function shown(user: UserPage): Promise<Shown[]> {
  return user.page.$$eval("#messages > li", (items) =>
    items.map((item) => ({
      id: item.getAttribute("data-id") === null ? null : Number(item.getAttribute("data-id")),
      sender: item.querySelector(".name")?.textContent ?? "",
      ip: item.querySelector(".ip")?.textContent ?? "",
      text: item.querySelector(".text")?.textContent ?? "",
      own: item.classList.contains("own"),
      pending: item.classList.contains("pending"),
    })));
}

/** Waits until the page shows `text` as a message that is not pending. */
async function waitShown(user: UserPage, text: string): Promise<Shown> {
  await user.page.waitForFunction(
    (text) =>
      [...document.querySelectorAll("#messages > li:not(.pending) .text")].some((node) =>
        node.textContent === text
      ),
    {},
    text,
  );
  return (await shown(user)).find((message) => message.text === text)!;
}

function online(user: UserPage): Promise<string[]> {
  return user.page.$$eval("#online .name", (nodes) => nodes.map((node) => node.textContent ?? ""));
}

async function waitOnline(user: UserPage, check: (names: string[]) => boolean): Promise<string[]> {
  const deadline = Date.now() + WAIT_MS;
  while (true) {
    const names = await online(user);
    if (check(names)) return names;
    if (Date.now() > deadline) throw new Error(`Online list never matched: ${names.join(", ")}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Asserts the page shows each message id at most once and in increasing order. */
async function assertNoDuplicates(user: UserPage): Promise<Shown[]> {
  const messages = await shown(user);
  const ids = messages.map((message) => message.id).filter((id) => id !== null);
  assert.deepEqual(ids, [...new Set(ids)].sort((a, b) => a - b), "ids unique and in order");
  return messages;
}

/** A TLS client logged in with the version 2 features, past its replay. */
async function tlsUser(port: number, name: string): Promise<TestClient> {
  const client = await TestClient.connect(port);
  await client.send({ type: "auth", password: PASSWORD, name, features: ["ids", "presence"] });
  assert.equal((await client.recv()).success, true);
  assert.equal((await client.recv()).type, "welcome");
  return client;
}

/** Receives until a frame matches `check`; returns it. */
async function recvUntil(client: TestClient, check: (frame: Frame) => boolean): Promise<Frame> {
  const deadline = Date.now() + WAIT_MS;
  while (true) {
    const frame = await client.recv(Math.max(1, deadline - Date.now()));
    if (check(frame)) return frame;
  }
}

async function post(client: TestClient, content: string): Promise<void> {
  const ref = crypto.randomUUID();
  await client.send({ type: "message", content, ref });
  await recvUntil(client, (frame) => frame.type === "ack" && frame.ref === ref);
}

Deno.test({
  name: "web client in Chromium: chat, history, presence, HTML as text, restart, wrong password",
  ignore: !hasChromium(),
  async fn(t) {
    const dataDir = await Deno.makeTempDir({ prefix: "chat-web-test-" });
    let store = openStore({ dataDir, keep: 1000 }).store;
    let chat = await startChat(store);
    const browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ["--no-sandbox", "--ignore-certificate-errors"],
    });
    const clients: TestClient[] = [];
    const users: UserPage[] = [];
    try {
      let alice!: UserPage, bob!: UserPage, carol!: TestClient;

      await t.step("two pages and a TLS client chat in one room", async () => {
        alice = await joinAs(browser, chat.url, "alice");
        bob = await joinAs(browser, chat.url, "bob", { width: 360, height: 720 });
        carol = await tlsUser(chat.port, "carol");
        const dave = await tlsUser(chat.port, "dave");
        users.push(alice, bob);
        clients.push(carol, dave);
        await waitOnline(alice, (names) => names.length === 4);

        await post(carol, "Morning! The nightly build is green again.");
        await waitShown(alice, "Morning! The nightly build is green again.");

        await say(alice, "Great, thanks for fixing the flaky test");
        const mine = await waitShown(alice, "Great, thanks for fixing the flaky test");
        assert.equal(mine.own, true);
        assert.equal(mine.sender, "alice");
        const atBob = await waitShown(bob, "Great, thanks for fixing the flaky test");
        assert.deepEqual([atBob.own, atBob.sender, atBob.ip], [false, "alice", "127.0.0.1"]);
        assert.equal(atBob.id, mine.id);
        const atCarol = await recvUntil(carol, (frame) => frame.type === "message");
        assert.equal(atCarol.sender, "alice");
        assert.equal(atCarol.content, "Great, thanks for fixing the flaky test");

        await post(dave, "I'm deploying 2.4 to staging at 10:30");
        await say(bob, "Sounds good, I'll keep an eye on the dashboards");
        await waitShown(alice, "Sounds good, I'll keep an eye on the dashboards");
        await say(
          alice,
          "Ping me when it's live and I'll run the smoke tests\n(checklist in the wiki)",
        );
        const multi = await waitShown(
          bob,
          "Ping me when it's live and I'll run the smoke tests\n(checklist in the wiki)",
        );
        assert.equal(multi.sender, "alice");
        await post(carol, "Will do. Coffee first");
        await waitShown(alice, "Will do. Coffee first");

        assert.deepEqual(await online(alice), ["alice", "bob", "carol", "dave"]);
        assert.deepEqual((await online(bob))[0], "bob", "the user comes first");
        const messages = await assertNoDuplicates(alice);
        assert.deepEqual(messages.map((message) => message.sender), [
          "carol",
          "alice",
          "dave",
          "bob",
          "alice",
          "carol",
        ]);
        assert.deepEqual(messages.map((message) => message.own), [
          false,
          true,
          false,
          false,
          true,
          false,
        ]);
        const count = await alice.page.$eval("#online-count", (node) => node.textContent);
        assert.equal(count, "4");
        if (Deno.env.get("UPDATE_SCREENSHOT") === "1") {
          await alice.page.evaluate(() => (document.activeElement as HTMLElement | null)?.blur());
          const png = await alice.page.screenshot({ type: "png" });
          await Deno.writeFile(SCREENSHOT, png);
        }
      });

      await t.step("history shows on load, and a reload logs in again by itself", async () => {
        const erin = await joinAs(browser, chat.url, "erin", { width: 360, height: 640 });
        users.push(erin);
        const messages = await assertNoDuplicates(erin);
        assert.equal(messages.length, 6);
        assert.equal(messages[0].text, "Morning! The nightly build is green again.");
        assert.equal(messages.every((message) => !message.own && !message.pending), true);
        assert.equal(
          await erin.page.$eval("#log-start", (node) => node.textContent),
          "Start of the conversation",
        );

        await alice.page.reload();
        await alice.page.waitForSelector("#chat-view:not([hidden])");
        const again = await waitShown(alice, "Will do. Coffee first");
        assert.equal(again.own, false);
        const own = (await assertNoDuplicates(alice)).filter((message) => message.own);
        assert.equal(own.length, 2, "own messages stay marked after a reload");
        await erin.page.close();
      });

      await t.step("the online list follows joins and leaves", async () => {
        await waitOnline(alice, (names) => !names.includes("erin"));
        await carol.close();
        await waitOnline(alice, (names) => !names.includes("carol"));
        const frank = await tlsUser(chat.port, "frank");
        clients.push(frank);
        const names = await waitOnline(alice, (names) => names.includes("frank"));
        assert.deepEqual(names, ["alice", "bob", "dave", "frank"]);
        assert.deepEqual(await waitOnline(bob, (names) => names.includes("frank")), [
          "bob",
          "alice",
          "dave",
          "frank",
        ]);
      });

      await t.step("HTML in a message or a name is shown as text and runs nothing", async () => {
        const html = "<img src=x onerror=alert(1)>";
        const mallory = await tlsUser(chat.port, "<b>mallory</b>");
        clients.push(mallory);
        await post(mallory, html);
        await say(bob, html);
        await waitShown(alice, html);
        await waitOnline(alice, (names) => names.includes("<b>mallory</b>"));
        const messages = await shown(alice);
        const both = messages.filter((message) => message.text === html);
        assert.deepEqual(both.map((message) => message.sender), ["<b>mallory</b>", "bob"]);
        const injected = await alice.page.$$eval(
          "#messages img, #messages b, #online img, #online b",
          (nodes) => nodes.length,
        );
        assert.equal(injected, 0, "no element made from network text");
        await new Promise((resolve) => setTimeout(resolve, 200)); // an onerror would fire by now
        assert.deepEqual([...alice.dialogs, ...bob.dialogs], []);
      });

      await t.step("older messages page in when scrolled to the top", async () => {
        const paging = await tlsUser(chat.port, "history-bot");
        clients.push(paging);
        for (let i = 1; i <= 60; i++) {
          await paging.send({ type: "message", content: `line ${i}`, ref: `paging-${i}` });
        }
        await recvUntil(paging, (frame) => frame.type === "ack" && frame.ref === "paging-60");
        const grace = await joinAs(browser, chat.url, "grace");
        users.push(grace);
        assert.equal((await shown(grace)).length, 50);
        assert.equal(
          await grace.page.$eval("#older", (node) => (node as HTMLElement).hidden),
          false,
        );
        const total = store.count();
        for (let i = 0; i < 10 && (await shown(grace)).length < total; i++) {
          await grace.page.$eval("#log", (node) => node.scrollTop = 0);
          await delay(100);
          await grace.page.waitForFunction(() =>
            document.querySelector("#log-start:not([hidden])") ||
            document.querySelector("#older:not([hidden])")
          );
        }
        await grace.page.waitForSelector("#log-start:not([hidden])");
        const all = await assertNoDuplicates(grace);
        assert.equal(all.length, total);
        assert.equal(all[0].text, "Morning! The nightly build is green again.");
        assert.equal(all.at(-1)!.text, "line 60");
        await grace.page.close();
      });

      await t.step("a page reconnects after a server restart and loses nothing", async () => {
        const { port, webPort } = chat;
        await chat.server.close();
        store.close();
        for (const client of clients) await client.close();
        clients.length = 0;
        await alice.page.waitForSelector("#banner:not([hidden])");
        const banner = await alice.page.$eval("#banner-text", (node) => node.textContent ?? "");
        assert.match(banner, /^Reconnecting…/);

        await say(alice, "typed while the server was down");
        await alice.page.waitForFunction(() =>
          [...document.querySelectorAll("#messages > li.pending .text")].some((node) =>
            node.textContent === "typed while the server was down"
          )
        );

        store = openStore({ dataDir, keep: 1000 }).store;
        chat = await startChat(store, { port, webPort });
        const heidi = await tlsUser(chat.port, "heidi");
        clients.push(heidi);
        await post(heidi, "first message after the restart");

        const atBob = await waitShown(bob, "typed while the server was down");
        assert.equal(atBob.sender, "alice");
        const atAlice = await waitShown(alice, "typed while the server was down");
        assert.equal(atAlice.own, true);
        await waitShown(alice, "first message after the restart");
        await waitShown(bob, "first message after the restart");
        await alice.page.waitForSelector("#banner", { hidden: true });
        for (const user of [alice, bob]) {
          const messages = await assertNoDuplicates(user);
          for (
            const text of ["typed while the server was down", "first message after the restart"]
          ) {
            assert.equal(messages.filter((message) => message.text === text).length, 1, text);
          }
          assert.equal(messages.some((message) => message.pending), false);
        }
        const frame = await recvUntil(heidi, (frame) => frame.type === "message");
        assert.equal(frame.content, "typed while the server was down");
      });

      await t.step("a page paces itself to a strict server's rate and loses nothing", async () => {
        const { cert, key } = await testCerts();
        await using strict = new ChatServer({
          hostname: "127.0.0.1",
          port: 0,
          cert,
          key,
          password: PASSWORD,
          limits: { rate: 4, burst: 2 },
          web: { port: 0 },
        });
        const { port } = await strict.listen();
        const reader = await tlsUser(port, "reader");
        clients.push(reader);
        const judy = await joinAs(browser, `https://127.0.0.1:${strict.webAddr!.port}/`, "judy");
        users.push(judy);
        const lines = Array.from({ length: 10 }, (_, i) => `paced ${i + 1}`);
        for (const line of lines) await say(judy, line);
        const received: string[] = [];
        while (received.length < lines.length) {
          const frame = await recvUntil(reader, (frame) => frame.type === "message");
          received.push(frame.content as string);
        }
        assert.deepEqual(received, lines, "every line, once, in order");
        for (const line of lines) await waitShown(judy, line);
        assert.equal((await shown(judy)).some((message) => message.pending), false);
        // Paced, not refused: the server never had to drop one of them.
        assert.equal(strict.stats().errors.rate_limited ?? 0, 0);
        await judy.page.close();
      });

      await t.step("the online list of a room too large for one frame comes whole", async () => {
        const { cert, key } = await testCerts();
        await using big = new ChatServer({
          hostname: "127.0.0.1",
          port: 0,
          cert,
          key,
          password: PASSWORD,
          limits: { maxPerIp: 0 },
          web: { port: 0 },
        });
        const { port } = await big.listen();
        // 900 members with 64-character names of 4-byte characters: about 290 KB of members,
        // more than one part of 256 KiB, so the welcome's list comes in two parts.
        const named = (i: number) => `${"\u{1F600}".repeat(60)}${String(i).padStart(4, "0")}`;
        const fillers: TestClient[] = [];
        try {
          for (let from = 0; from < 900; from += 100) {
            fillers.push(
              ...await Promise.all(Array.from({ length: 100 }, async (_, i) => {
                const client = await TestClient.connect(port);
                await client.send({ type: "auth", password: PASSWORD, name: named(from + i) });
                assert.equal((await client.recv(WAIT_MS)).success, true);
                return client;
              })),
            );
          }
          const probe = await TestClient.connect(port);
          fillers.push(probe);
          await probe.send({ type: "auth", password: PASSWORD, features: ["presence"] });
          assert.equal((await probe.recv()).success, true);
          assert.equal((await probe.recv()).members_more, true, "the list comes in parts");
          await probe.close();
          const kim = await joinAs(browser, `https://127.0.0.1:${big.webAddr!.port}/`, "kim");
          users.push(kim);
          await kim.page.waitForFunction(() =>
            document.querySelector("#online-count")?.textContent === "901"
          );
          const names = await online(kim);
          assert.equal(names[0], "kim");
          assert.deepEqual(
            names.slice(1).sort(),
            Array.from({ length: 900 }, (_, i) => named(i)).sort(),
          );
          assert.ok((big.stats().errors.rate_limited ?? 0) === 0);
          await kim.page.close();
        } finally {
          await Promise.all(fillers.map((client) => client.close()));
        }
      });

      await t.step("a wrong password shows the server's error and is not kept", async () => {
        const user = await openPage(browser);
        users.push(user);
        await login(user, chat.url, "ivan", "not the password");
        await user.page.waitForSelector("#login-error:not([hidden])");
        const error = await user.page.$eval("#login-error", (node) => node.textContent);
        assert.match(error ?? "", /Invalid password/);
        assert.equal(
          await user.page.$eval("#chat-view", (node) => (node as HTMLElement).hidden),
          true,
        );
        const kept = await user.page.evaluate(() =>
          JSON.stringify([{ ...sessionStorage }, { ...localStorage }, location.href])
        );
        assert.equal(kept.includes("not the password"), false);
        // The password of a good login is kept for this tab only.
        const tab = await alice.page.evaluate(() => [
          sessionStorage.getItem("chat.password"),
          JSON.stringify({ ...localStorage }) as string,
        ]);
        assert.equal(tab[0], PASSWORD);
        assert.equal(tab[1]?.includes(PASSWORD), false);
      });

      for (const user of users) assert.deepEqual(user.errors, [], "no script or CSP errors");
    } finally {
      for (const client of clients) await client.close();
      await browser.close();
      await chat.server.close();
      store.close();
      await Deno.remove(dataDir, { recursive: true });
    }
  },
});
