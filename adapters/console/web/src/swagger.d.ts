declare module "swagger-ui-dist/swagger-ui-bundle.js" {
  interface Request { headers: Record<string, string>; url: string }
  interface Options {
    url: string;
    domNode: HTMLElement;
    deepLinking?: boolean;
    persistAuthorization?: boolean;
    tryItOutEnabled?: boolean;
    requestInterceptor?: (r: Request) => Request;
  }
  const SwaggerUIBundle: (o: Options) => unknown;
  export default SwaggerUIBundle;
}
