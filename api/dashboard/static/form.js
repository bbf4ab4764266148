// Form fields generated from JSON schemas: JobCreate from /openapi.json and each algorithm's
// hyperparameter config from GET /v1/hyperparameters/{algorithm}/schema (the API validates with both).
// A blank field is left out of the request, so the server's default applies (shown as placeholder).
import { h } from "./dom.js";

export function resolve(schema, root) {
  let s = schema;
  while (s && s.$ref) {
    s = s.$ref
      .replace(/^#\//, "")
      .split("/")
      .reduce((o, k) => o[k], root);
  }
  return s || {};
}

/** [the schema without its null alternative, whether null is allowed] */
function unwrapNullable(schema, root) {
  const s = resolve(schema, root);
  const alternatives = s.anyOf || s.oneOf;
  if (alternatives) {
    const rest = alternatives.filter((a) => a.type !== "null");
    if (rest.length === 1 && rest.length < alternatives.length) {
      return [{ ...resolve(rest[0], root), description: s.description, default: s.default, title: s.title }, true];
    }
  }
  return [s, false];
}

function describe(name, schema, required) {
  const label = h("span", { class: "label" }, name, required ? h("span", { class: "req", title: "required" }, "*") : "");
  const help = schema.description ? h("small", { class: "muted help" }, schema.description) : "";
  return [label, help];
}

function defaultText(schema) {
  if (schema.default === undefined) return "";
  return schema.default === null ? "null" : JSON.stringify(schema.default);
}

/**
 * A field for `schema`; returns {el, read, input}. read() gives the value, or undefined when blank,
 * and throws Error(name: reason) for text it cannot turn into the schema's type.
 */
export function field(name, schemaIn, root, { required = false, datalist = null, example = null } = {}) {
  const [schema, nullable] = unwrapNullable(schemaIn, root);
  const [label, help] = describe(name, schema, required);
  const dflt = defaultText(schema);
  const enumValues = schema.enum || (schema.const !== undefined ? [schema.const] : null);

  if (enumValues || schema.type === "boolean") {
    const values = enumValues || [true, false];
    const select = h("select", { name });
    if (!required || schema.default !== undefined) {
      select.append(h("option", { value: "" }, dflt ? `default (${dflt})` : "—"));
    }
    for (const v of values) select.append(h("option", { value: JSON.stringify(v) }, String(v)));
    return {
      el: h("label", { class: "field", "data-field": name }, label, select, help),
      input: select,
      read: () => (select.value === "" ? undefined : JSON.parse(select.value)),
    };
  }

  if (schema.type === "integer" || schema.type === "number") {
    const attrs = { name, type: "number", step: schema.type === "integer" ? "1" : "any", placeholder: dflt };
    const min = schema.minimum ?? schema.exclusiveMinimum;
    const max = schema.maximum ?? schema.exclusiveMaximum;
    if (min !== undefined) attrs.min = String(min);
    if (max !== undefined) attrs.max = String(max);
    const input = h("input", attrs);
    return {
      el: h("label", { class: "field", "data-field": name }, label, input, help),
      input,
      read: () => {
        if (input.value.trim() === "") return undefined;
        const v = Number(input.value);
        if (!Number.isFinite(v)) throw new Error(`${name}: not a number`);
        return v;
      },
    };
  }

  if (schema.type === "string") {
    const attrs = { name, type: "text", placeholder: dflt || (schema.examples ? String(schema.examples[0]) : "") };
    if (schema.maxLength) attrs.maxlength = String(schema.maxLength);
    if (datalist) attrs.list = datalist;
    const input = h("input", attrs);
    return {
      el: h("label", { class: "field", "data-field": name }, label, input, help),
      input,
      read: () => (input.value === "" ? undefined : input.value),
    };
  }

  if (schema.type === "object" && schema.properties) {
    const group = objectFields(schema, root);
    const body = h("div", { class: "grid" }, ...group.fields.map((f) => f.el));
    if (!nullable) {
      return {
        el: h("fieldset", { class: "field wide", "data-field": name }, h("legend", {}, name), help, body),
        read: group.read,
      };
    }
    // An optional object (e.g. lora: null = off): a switch, then its fields.
    const toggle = h("input", { type: "checkbox", name: `${name}.enabled` });
    body.hidden = true;
    toggle.addEventListener("change", () => (body.hidden = !toggle.checked));
    return {
      el: h(
        "fieldset",
        { class: "field wide", "data-field": name },
        h("legend", {}, h("label", {}, toggle, ` ${name}`)),
        help,
        body,
      ),
      input: toggle,
      read: () => (toggle.checked ? group.read() || {} : undefined),
    };
  }

  // Anything else (lists, maps, unions): JSON text, parsed on submit and validated by the server.
  const area = h("textarea", { name, rows: "3", placeholder: example || dflt || "JSON", spellcheck: "false" });
  return {
    el: h("label", { class: "field wide", "data-field": name }, label, area, help),
    input: area,
    read: () => {
      if (area.value.trim() === "") return undefined;
      try {
        return JSON.parse(area.value);
      } catch (e) {
        throw new Error(`${name}: not valid JSON (${e.message})`);
      }
    },
  };
}

/** Fields for every property of an object schema; read() gives an object of the filled ones or undefined. */
export function objectFields(schema, root, overrides = {}) {
  const required = new Set(schema.required || []);
  const fields = Object.entries(schema.properties || {}).map(([name, prop]) => {
    const f = overrides[name] ? overrides[name](name, prop) : field(name, prop, root, { required: required.has(name) });
    return { name, ...f };
  });
  return {
    fields,
    read() {
      const out = {};
      for (const f of fields) {
        const v = f.read();
        if (v !== undefined) out[f.name] = v;
      }
      return Object.keys(out).length ? out : undefined;
    },
  };
}
