/* The console's own script: local times, and the submit form's schema check. No eval, no
   inline handlers: the pages' Content-Security-Policy allows only scripts served from here. */
(function () {
  "use strict";

  var thisYear = new Date().getFullYear();
  var sameYear = new Intl.DateTimeFormat(undefined, {
    month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short"
  });
  var otherYear = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short"
  });
  var clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });

  /* Show each <time datetime> in the viewer's zone; its title keeps the UTC time. */
  function localize(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var when = new Date(el.getAttribute("datetime"));
      if (!isNaN(when)) {
        el.textContent = (when.getFullYear() === thisYear ? sameYear : otherYear).format(when);
      }
    });
    root.querySelectorAll("[data-time]").forEach(function (el) {
      var when = new Date(el.getAttribute("data-time"));
      if (!isNaN(when)) { el.textContent = clock.format(when); }
    });
  }

  /* A JSON Schema check of the keywords definitions use most; the API checks everything
     again (and a keyword this does not know, such as $ref, is left to it). */
  function typeOf(value) {
    if (value === null) { return "null"; }
    if (Array.isArray(value)) { return "array"; }
    if (typeof value === "number") { return Number.isInteger(value) ? "integer" : "number"; }
    return typeof value;
  }

  function typeMatches(expected, actual) {
    return expected === actual || (expected === "number" && actual === "integer");
  }

  function check(schema, value, path, problems) {
    if (schema === true || schema === undefined || schema === null) { return; }
    if (schema === false) { problems.push([path, "no value is allowed here"]); return; }
    var actual = typeOf(value);
    var here = path || "input";
    if (schema.type !== undefined) {
      var types = Array.isArray(schema.type) ? schema.type : [schema.type];
      if (!types.some(function (t) { return typeMatches(t, actual); })) {
        problems.push([here, "must be " + types.join(" or ") + ", not " + actual]);
        return;
      }
    }
    if (schema.enum && !schema.enum.some(function (v) { return JSON.stringify(v) === JSON.stringify(value); })) {
      problems.push([here, "must be one of " + JSON.stringify(schema.enum)]);
    }
    if ("const" in schema && JSON.stringify(schema.const) !== JSON.stringify(value)) {
      problems.push([here, "must be " + JSON.stringify(schema.const)]);
    }
    if (actual === "number" || actual === "integer") {
      if (schema.minimum !== undefined && value < schema.minimum) { problems.push([here, "must be at least " + schema.minimum]); }
      if (schema.maximum !== undefined && value > schema.maximum) { problems.push([here, "must be at most " + schema.maximum]); }
      if (typeof schema.exclusiveMinimum === "number" && value <= schema.exclusiveMinimum) { problems.push([here, "must be above " + schema.exclusiveMinimum]); }
      if (typeof schema.exclusiveMaximum === "number" && value >= schema.exclusiveMaximum) { problems.push([here, "must be below " + schema.exclusiveMaximum]); }
    }
    if (actual === "string") {
      var length = Array.from(value).length;
      if (schema.minLength !== undefined && length < schema.minLength) { problems.push([here, "must be at least " + schema.minLength + " characters"]); }
      if (schema.maxLength !== undefined && length > schema.maxLength) { problems.push([here, "must be at most " + schema.maxLength + " characters"]); }
      if (schema.pattern !== undefined) {
        try {
          if (!new RegExp(schema.pattern, "u").test(value)) { problems.push([here, "must match " + schema.pattern]); }
        } catch (e) { /* a pattern JavaScript cannot read: the API checks it */ }
      }
    }
    if (actual === "array") {
      if (schema.minItems !== undefined && value.length < schema.minItems) { problems.push([here, "needs at least " + schema.minItems + " items"]); }
      if (schema.maxItems !== undefined && value.length > schema.maxItems) { problems.push([here, "takes at most " + schema.maxItems + " items"]); }
      if (schema.items && !Array.isArray(schema.items)) {
        value.forEach(function (item, i) { check(schema.items, item, here + "[" + i + "]", problems); });
      }
    }
    if (actual === "object") {
      var props = schema.properties || {};
      (schema.required || []).forEach(function (name) {
        if (!(name in value)) { problems.push([here + "." + name, "is required"]); }
      });
      Object.keys(value).forEach(function (name) {
        if (name in props) {
          check(props[name], value[name], here + "." + name, problems);
        } else if (schema.additionalProperties === false) {
          problems.push([here + "." + name, "is not allowed"]);
        } else if (typeof schema.additionalProperties === "object") {
          check(schema.additionalProperties, value[name], here + "." + name, problems);
        }
      });
    }
    (schema.allOf || []).forEach(function (sub) { check(sub, value, path, problems); });
    ["anyOf", "oneOf"].forEach(function (key) {
      if (!schema[key]) { return; }
      var passing = schema[key].filter(function (sub) { var p = []; check(sub, value, path, p); return p.length === 0; }).length;
      if (key === "anyOf" ? passing === 0 : passing !== 1) {
        problems.push([here, key === "anyOf" ? "matches none of the allowed shapes" : "must match exactly one allowed shape"]);
      }
    });
  }

  function watchSubmitForm() {
    var form = document.getElementById("submit-form");
    var source = document.getElementById("input-schema");
    if (!form || !source) { return; }
    var schema = JSON.parse(source.textContent);
    var list = document.getElementById("input-problems");
    form.addEventListener("submit", function (event) {
      var problems = [];
      var text = form.querySelector("textarea[name=input]").value;
      try {
        check(schema, JSON.parse(text || "{}"), "", problems);
      } catch (e) {
        problems.push(["input", "is not valid JSON: " + e.message]);
      }
      list.replaceChildren();
      problems.forEach(function (p) {
        var item = document.createElement("li");
        var field = document.createElement("code");
        field.textContent = p[0];
        item.append(field, " " + p[1]);
        list.append(item);
      });
      if (problems.length) { event.preventDefault(); }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    localize(document);
    watchSubmitForm();
    document.body.addEventListener("htmx:afterSettle", function (event) { localize(event.target); });
  });
})();
