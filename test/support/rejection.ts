// For asserting on the error a promise rejects with, not merely that it rejects.

/** Resolves with the error `promise` rejects with; throws if it fulfils instead. */
export async function rejection(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected a rejection');
}
