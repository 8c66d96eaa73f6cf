// Device tags (SPEC §16) as the console edits them: one text field, tags
// separated by spaces or commas. The server checks them (and keeps them
// sorted without duplicates); the console only splits the text.

/** tagPattern is what the server accepts as one tag. */
export const tagPattern = /^[a-z0-9_.:-]{1,64}$/;

/** maxTags is the most tags a device carries. */
export const maxTags = 32;

/** parseTags splits the text of a tags field into tags. */
export function parseTags(text: string): string[] {
  return text.split(/[\s,]+/).filter((t) => t !== "");
}

/** badTags are the tags of the list the server would refuse. */
export function badTags(tags: string[]): string[] {
  return tags.filter((t) => !tagPattern.test(t));
}

/** tagsText is the text of a tags field showing tags. */
export function tagsText(tags: readonly string[] | undefined): string {
  return (tags ?? []).join(" ");
}
