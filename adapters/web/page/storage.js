/* What this tab keeps across a reload. Storage may be off (privacy modes): the page still
 * works, without rejoin on reload.
 */

// sessionStorage: this tab's token, the name it joined with (a reload rejoins) and its prompts
// not yet answered; localStorage: the last name used, to prefill the form.
export const KEYS = { token: "concordia.token", joined: "concordia.joined", pending: "concordia.pending",
  name: "concordia.name" };

export function storageGet(storage, key) {
  try { return storage.getItem(key) || ""; } catch { return ""; }
}

export function storageSet(storage, key, value) {
  try { value ? storage.setItem(key, value) : storage.removeItem(key); } catch { /* off */ }
}
