import { describe, expect, it } from "vitest";
import { badTags, parseTags, tagsText } from "../../src/tags";

describe("tags", () => {
  it("splits a tags field on spaces and commas", () => {
    expect(parseTags(" site:berlin, canary  floor-2,")).toEqual(["site:berlin", "canary", "floor-2"]);
    expect(parseTags("   ")).toEqual([]);
  });
  it("names the tags the server would refuse", () => {
    expect(badTags(["ok", "Not", "a".repeat(65), "a".repeat(64), "x.y_z:1-2"])).toEqual(["Not", "a".repeat(65)]);
  });
  it("shows tags as the field's text", () => {
    expect(tagsText(["a", "b:1"])).toBe("a b:1");
    expect(tagsText(undefined)).toBe("");
  });
});
