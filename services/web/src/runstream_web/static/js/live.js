// Following a proposal's updates over Server-Sent Events.
//
// The table snapshot carries a cursor; the stream starts after it. The browser
// reconnects by itself (sending the id of the last event it saw), and the
// service replays what was missed; when it cannot (it restarted, or this page
// fell too far behind) it sends "reset" and the page reloads the table.

import { paths } from "./api.js";

export class Live {
  constructor(proposal, { onUpdates, onReset, onState }) {
    this.proposal = proposal;
    this.onUpdates = onUpdates;
    this.onReset = onReset;
    this.onState = onState;
    this.source = null;
    this.cursor = null;
    this.queue = [];
    this.flushing = 0;
    this.retry = 0;
  }

  start(cursor) {
    this.stop();
    this.cursor = cursor;
    this.connect();
  }

  connect() {
    const source = new EventSource(paths.events(this.proposal, this.cursor));
    this.source = source;
    source.addEventListener("open", () => this.onState("live"));
    source.addEventListener("update", (event) => {
      this.cursor = event.lastEventId || this.cursor;
      this.queue.push(JSON.parse(event.data));
      if (!this.flushing) {
        // with the next frame; a hidden page gets no frames, so a timer there
        this.flushing = document.hidden
          ? setTimeout(() => this.flush(), 250)
          : requestAnimationFrame(() => this.flush());
      }
    });
    source.addEventListener("reset", () => {
      this.stop();
      this.onState("reconnecting");
      this.onReset();
    });
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        // the service answered with an error (or is gone): try again, from where we were
        this.onState("offline");
        clearTimeout(this.retry);
        this.retry = setTimeout(() => { if (this.source === source) this.connect(); }, 2000);
      } else {
        this.onState("reconnecting");
      }
    });
  }

  flush() {
    this.flushing = 0;
    const batch = this.queue;
    this.queue = [];
    if (batch.length) this.onUpdates(batch);
  }

  stop() {
    clearTimeout(this.retry);
    if (this.source) this.source.close();
    this.source = null;
  }
}
