// comix-embed serve: the map of a store's pages (/map/STORE), drawn as SVG from /api/map/STORE.
// Each view change (wheel, drag, buttons) asks the server for the points inside the new view: a
// sample of them in a fixed random order, all of them once few enough; thumbnails when few are
// in view. Every point is a link to its page. No inline script: the site's CSP allows files only.
"use strict";

(() => {
  const svg = document.querySelector("[data-testid=map-svg]");
  if (!svg) return;
  const NS = "http://www.w3.org/2000/svg";
  const THUMBS = 200; // at most this many pages in view: thumbnails instead of dots
  const DOT_PX = 3.5;
  const THUMB_PX = 56;
  const layer = svg.querySelector("g.points");
  const count = document.querySelector("[data-testid=map-count]");
  const extent = svg.dataset.extent.split(" ").map(Number);
  let view = { x: extent[0], y: extent[1], w: extent[2] - extent[0], h: extent[3] - extent[1] };
  let asked = 0; // the latest request: an answer to an older one is dropped
  let timer = null;

  // The SVG's size on screen, in CSS pixels.
  function size() {
    const rect = svg.getBoundingClientRect();
    return { width: Math.max(rect.width, 1), height: Math.max(rect.height, 1) };
  }

  // The view widened to the SVG's shape, so that what the server is asked is what is seen.
  function fitted(v) {
    const ratio = size().width / size().height;
    if (v.w / v.h < ratio) {
      const w = v.h * ratio;
      return { x: v.x - (w - v.w) / 2, y: v.y, w: w, h: v.h };
    }
    const h = v.w / ratio;
    return { x: v.x, y: v.y - (h - v.h) / 2, w: v.w, h: h };
  }

  function show(v) {
    view = fitted(v);
    svg.setAttribute("viewBox", `${view.x} ${view.y} ${view.w} ${view.h}`);
    clearTimeout(timer);
    timer = setTimeout(load, 120);
  }

  function load() {
    const mine = ++asked;
    const box = { x0: view.x, y0: view.y, x1: view.x + view.w, y1: view.y + view.h, limit: svg.dataset.limit };
    const url = new URL(svg.dataset.api, window.location.href); // it may carry a filter's fields already
    Object.entries(box).forEach(([name, value]) => url.searchParams.set(name, value));
    fetch(url)
      .then((response) => response.json())
      .then((answer) => {
        if (mine === asked) draw(answer);
      });
  }

  function draw(answer) {
    const unit = view.w / size().width; // map units per screen pixel
    const thumbs = answer.in_view <= THUMBS && answer.rows.length === answer.in_view;
    const made = document.createDocumentFragment();
    answer.rows.forEach((row, i) => {
      const link = document.createElementNS(NS, "a");
      link.setAttribute("href", svg.dataset.page + row);
      link.setAttribute("data-testid", "map-point");
      link.setAttribute("data-row", row);
      if (answer.colour[i] < 0) link.setAttribute("class", "outside"); // outside the filter: greyed out
      const title = document.createElementNS(NS, "title");
      title.textContent = answer.page_id[i] || `row ${row}`;
      link.appendChild(title);
      if (thumbs) {
        const image = document.createElementNS(NS, "image");
        const side = THUMB_PX * unit;
        image.setAttribute("href", `${svg.dataset.thumb}${row}?size=128`);
        image.setAttribute("x", answer.x[i] - side / 2);
        image.setAttribute("y", answer.y[i] - side / 2);
        image.setAttribute("width", side);
        image.setAttribute("height", side);
        image.addEventListener("load", () => image.setAttribute("data-loaded", "true"));
        image.addEventListener("error", () => image.setAttribute("data-loaded", "false"));
        link.appendChild(image);
      } else {
        const dot = document.createElementNS(NS, "circle");
        dot.setAttribute("cx", answer.x[i]);
        dot.setAttribute("cy", answer.y[i]);
        dot.setAttribute("r", DOT_PX * unit);
        dot.setAttribute("class", `c${answer.colour[i]}`);
        link.appendChild(dot);
      }
      made.appendChild(link);
    });
    layer.replaceChildren(made);
    const shown = answer.rows.length;
    count.textContent = `${shown} of ${answer.in_view} pages in view${thumbs ? " (thumbnails)" : ""}; ${answer.placed} on the map`;
    svg.dataset.drawn = String(Number(svg.dataset.drawn) + 1);
    svg.dataset.mode = thumbs ? "thumbnails" : "dots";
  }

  // A screen point as map coordinates.
  function at(event) {
    const rect = svg.getBoundingClientRect();
    return {
      x: view.x + ((event.clientX - rect.left) / rect.width) * view.w,
      y: view.y + ((event.clientY - rect.top) / rect.height) * view.h,
    };
  }

  function zoom(factor, centre) {
    const c = centre || { x: view.x + view.w / 2, y: view.y + view.h / 2 };
    show({ x: c.x - (c.x - view.x) * factor, y: c.y - (c.y - view.y) * factor, w: view.w * factor, h: view.h * factor });
  }

  svg.addEventListener(
    "wheel",
    (event) => {
      event.preventDefault();
      zoom(Math.exp(Math.max(-1, Math.min(1, event.deltaY * 0.002))), at(event));
    },
    { passive: false },
  );

  let drag = null; // where a press started, and whether it has moved far enough to be a drag
  svg.addEventListener("pointerdown", (event) => {
    drag = { x: event.clientX, y: event.clientY, view: view, moved: false };
  });
  window.addEventListener("pointermove", (event) => {
    if (!drag || !(event.buttons & 1)) return;
    const dx = event.clientX - drag.x;
    const dy = event.clientY - drag.y;
    if (!drag.moved && Math.hypot(dx, dy) < 4) return;
    drag.moved = true;
    const unit = drag.view.w / size().width;
    show({ x: drag.view.x - dx * unit, y: drag.view.y - dy * unit, w: drag.view.w, h: drag.view.h });
  });
  // A drag ends in a click on whatever is under the pointer (dispatched right after the
  // release, in the same task): it must not open that page.
  let dragged = false;
  window.addEventListener("pointerup", () => {
    dragged = Boolean(drag && drag.moved);
    drag = null;
    if (dragged) setTimeout(() => (dragged = false), 0);
  });
  svg.addEventListener(
    "click",
    (event) => {
      if (dragged) event.preventDefault();
    },
    true,
  );

  document.querySelectorAll("[data-zoom]").forEach((button) => {
    button.addEventListener("click", () => {
      const how = button.dataset.zoom;
      if (how === "reset") show({ x: extent[0], y: extent[1], w: extent[2] - extent[0], h: extent[3] - extent[1] });
      else zoom(Number(how));
    });
  });

  show(view);
  window.addEventListener("resize", () => show(view));
})();
